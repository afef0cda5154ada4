"""Map copied pages back to the Python objects that live on them.

CPython's ``id()`` is the object's address and ``sys.getsizeof`` its size (GC header
included), so every object covers a known address range. Objects are found from
``gc.get_objects()``, from everything they refer to (untracked ``str``/``int``/``float`` and
atom-only tuples and dicts are not in the GC lists), and from ``sys.modules`` (which also reaches
objects hidden by ``gc.freeze()``). Objects reached from a module global or a local variable of a
frame on the stack are credited to that name: the "holder".
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import types
from dataclasses import dataclass
from typing import Any

from forkmem._units import format_bytes
from forkmem.errors import InvalidArgument
from forkmem.testing._pagemap import PageSnapshot, copied_pages

__all__ = ["Attribution", "HolderShare", "TypeShare", "copied_objects"]

_HEAPTYPE = 1 << 9
_HAVE_GC = 1 << 14
# Py_TPFLAGS_MANAGED_DICT (3.11+) / MANAGED_WEAKREF (3.12+): extra words before the GC header.
_MANAGED = (1 << 4) | (1 << 3)
# Objects that are code or namespaces, not data: a holder's walk stops there.
_OPAQUE = (
    types.ModuleType,
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.CodeType,
    types.FrameType,
    types.TracebackType,
    types.GeneratorType,
    types.CoroutineType,
    property,
    classmethod,
    staticmethod,
)
_OUTSIDE: dict[type, int] = {list: 24, dict: 32, set: 40, frozenset: 40}
_HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True, slots=True)
class TypeShare:
    """Copied bytes that lie inside objects of one type.

    ``holders`` lists ``(holder, bytes)`` for the names holding most of them: ``"module.NAME"``
    for a module global, ``"function() local NAME"`` for a local variable of a frame on the stack.
    """

    type_name: str
    copied: int
    objects: int
    holders: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class HolderShare:
    """Copied bytes inside the objects reachable from one module global or local variable."""

    holder: str
    copied: int


@dataclass(frozen=True, slots=True)
class Attribution:
    """Which objects the copied pages hold (see `copied_objects()`).

    ``copied_pages`` pages of ``page_size`` bytes were copied; ``types`` (largest first) and
    ``holders`` split the bytes that lie inside Python objects. The rest, ``unattributed``, is
    allocator bookkeeping, freed slots and C buffers that no Python object owns.
    ``objects_scanned`` counts the objects looked at.
    """

    pid: int
    page_size: int
    copied_pages: int
    types: tuple[TypeShare, ...]
    holders: tuple[HolderShare, ...]
    objects_scanned: int

    @property
    def copied(self) -> int:
        """Bytes in copied pages."""
        return self.copied_pages * self.page_size

    @property
    def attributed(self) -> int:
        """Bytes of copied pages that lie inside a Python object."""
        return sum(share.copied for share in self.types)

    @property
    def unattributed(self) -> int:
        """Bytes of copied pages that no Python object covers."""
        return max(0, self.copied - self.attributed)

    def format(self, top: int = 8) -> str:
        """A small table of the ``top`` types and holders by copied bytes."""
        total = self.copied or 1
        lines = [
            f"copied pages: {self.copied_pages} x {self.page_size} B = {format_bytes(self.copied)}"
            f" ({self.objects_scanned} objects scanned)"
        ]
        for share in self.types[:top]:
            held = ", ".join(f"{name} {format_bytes(n)}" for name, n in share.holders[:2])
            lines.append(
                f"  {share.type_name:<24} {format_bytes(share.copied):>10} "
                f"{100 * share.copied / total:5.1f}%  {share.objects} objects"
                + (f"  held by {held}" if held else "")
            )
        lines.append(
            f"  {'(not a Python object)':<24} {format_bytes(self.unattributed):>10} "
            f"{100 * self.unattributed / total:5.1f}%"
        )
        if self.holders:
            lines.append("by holder:")
            lines.extend(
                f"  {h.holder:<40} {format_bytes(h.copied):>10} {100 * h.copied / total:5.1f}%"
                for h in self.holders[:top]
            )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format()


def _pointer_reader() -> Any:
    """A function reading one machine word at an address, where the object layout is known."""
    import sysconfig

    if (
        sys.implementation.name != "cpython"
        or not (3, 10) <= sys.version_info[:2] <= (3, 14)
        or sysconfig.get_config_var("Py_GIL_DISABLED")
        or sys.maxsize < 2**32
    ):
        return None
    import ctypes

    word = ctypes.c_ssize_t.from_address

    def read(address: int) -> int:
        return int(word(address).value)

    return read


def _type_name(tp: type) -> str:
    module = getattr(tp, "__module__", "builtins")
    return tp.__qualname__ if module == "builtins" else f"{module}.{tp.__qualname__}"


def _is_user_file(path: str) -> bool:
    """Not the standard library, not an installed package: the user's own code."""
    return (
        bool(path)
        and "site-packages" not in path
        and "dist-packages" not in path
        and not (path.startswith((sys.base_prefix, sys.prefix, "<")))
    )


def _roots() -> list[tuple[str, object]]:
    """Named roots, closest owners first: stack locals, user module globals, other globals."""
    named: list[tuple[str, object]] = []
    frame: types.FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        # Module-level frames: their locals are the module globals, named below. Frames of
        # libraries (pytest's own loop...) hold everything and would make poor holder names.
        path = os.path.abspath(code.co_filename)
        if code.co_name != "<module>" and not path.startswith(_HERE) and _is_user_file(path):
            qualname = getattr(code, "co_qualname", code.co_name)
            for name, value in list(frame.f_locals.items()):
                named.append((f"{qualname}() local {name}", value))
        frame = frame.f_back
    # Globals are read from each module's __dict__ slot: attribute access (vars(), .__name__)
    # would execute a module loaded by importlib.util.LazyLoader, here in the measured child.
    spaces: list[dict[str, Any]] = [
        object.__getattribute__(m, "__dict__")
        for m in list(sys.modules.values())
        if issubclass(type(m), types.ModuleType)
    ]
    spaces.sort(
        key=lambda ns: (
            ns.get("__name__") != "__main__",
            not _is_user_file(str(ns.get("__file__") or "")),
        )
    )
    for ns in spaces:
        module = str(ns.get("__name__"))
        if module.startswith("forkmem.testing"):
            continue
        for name, value in list(ns.items()):
            if not (name.startswith("__") and name.endswith("__")):
                named.append((f"{module}.{name}", value))
    return named


class _TypeInfo:
    """What the walk needs to know about a type, computed once per type."""

    __slots__ = ("basicsize", "dict_like", "has_gc", "heap", "opaque", "outside", "pre")

    def __init__(self, tp: type, sample: object) -> None:
        flags = tp.__flags__
        self.heap = bool(flags & _HEAPTYPE)
        self.has_gc = bool(flags & _HAVE_GC)
        self.opaque = issubclass(tp, _OPAQUE)
        self.basicsize: int = tp.__basicsize__
        # Storage kept apart from the object: 24 = list's ob_item, 32 = dict's ma_keys,
        # 40 = set's table (offsets in the object, identical in CPython 3.10 to 3.14).
        self.outside = _OUTSIDE.get(tp, 0)
        self.dict_like = issubclass(tp, dict)
        if self.heap:
            # Bytes before id(): GC header, then managed dict/weakref pointers (3.11+).
            self.pre = (16 if self.has_gc else 0) + (
                16 if flags & _MANAGED and sys.version_info >= (3, 11) else 0
            )
        else:
            try:
                self.pre = max(0, sys.getsizeof(sample) - sample.__sizeof__())
            except Exception:
                self.pre = 16 if self.has_gc else 0


def attribute(
    pages: set[int],
    page_size: int,
    *,
    exclude: tuple[object, ...] = (),
    top_holders: int = 3,
) -> Attribution:
    """Credit the copied ``pages`` to the objects (and holders) that lie on them."""
    shift = page_size.bit_length() - 1
    read_word = _pointer_reader()
    infos: dict[type, _TypeInfo] = {}
    by_type: dict[type, list[int]] = {}
    by_holder: dict[str, int] = {}
    type_holder: dict[tuple[type, str], int] = {}
    seen: set[int] = set()
    scanned = 0
    roots = _roots()
    # Our own bookkeeping must not count as the user's objects.
    seen.update(map(id, (pages, infos, by_type, by_holder, type_holder, seen, roots)))
    seen.update(map(id, exclude))
    get_referents = gc.get_referents
    getsizeof = sys.getsizeof
    object_sizeof = object.__sizeof__

    def span(start: int, end: int) -> int:
        total = 0
        for page in range(start >> shift, ((end - 1) >> shift) + 1):
            if page in pages:
                total += min(end, (page + 1) << shift) - max(start, page << shift)
        return total

    def walk(stack: list[object], holder: str | None) -> None:
        nonlocal scanned
        while stack:
            obj = stack.pop()
            addr = id(obj)
            if addr in seen:
                continue
            tp = type(obj)
            info = infos.get(tp)
            if info is None:
                info = infos[tp] = _TypeInfo(tp, obj)
            if holder is not None and info.opaque:
                continue  # left for the anonymous walk, which goes everywhere
            seen.add(addr)
            scanned += 1
            # Never call a Python-level __sizeof__ (heap types): it would run user code.
            size = object_sizeof(obj) + info.pre if info.heap else getsizeof(obj, 0)
            start = addr - info.pre
            n = 0
            if info.outside and read_word is not None:
                extra = size - info.pre - info.basicsize
                where = read_word(addr + info.outside) if extra > 0 else 0
                # Split keys are shared by many instance dicts: count them nowhere.
                if where and (tp is not dict or read_word(where) == 1):
                    n += span(where, where + extra)
                    size -= extra
            end = start + size
            first = start >> shift
            if first == (end - 1) >> shift:
                if first in pages:
                    n += size
            else:
                n += span(start, end)
            if n:
                entry = by_type.get(tp)
                if entry is None:
                    by_type[tp] = [n, 1]
                else:
                    entry[0] += n
                    entry[1] += 1
                if holder is not None:
                    by_holder[holder] = by_holder.get(holder, 0) + n
                    pair = (tp, holder)
                    type_holder[pair] = type_holder.get(pair, 0) + n
            if info.has_gc:
                stack.extend(get_referents(obj))
                if info.dict_like:
                    # 3.11+ dicts with only str keys do not report their keys to the GC.
                    with contextlib.suppress(RuntimeError):  # changed size meanwhile
                        stack.extend(dict.keys(obj))  # type: ignore[arg-type]

    # No collection during the walk: it would free objects whose addresses are in `seen`.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for holder, value in roots:
            walk([value], holder)
        del roots
        everything = gc.get_objects()
        seen.add(id(everything))
        everything.extend(sys.modules.values())
        walk(everything, None)
        del everything
    finally:
        if was_enabled:
            gc.enable()

    holders_of: dict[type, list[tuple[str, int]]] = {}
    for (tp, holder), n in type_holder.items():
        holders_of.setdefault(tp, []).append((holder, n))
    shares = [
        TypeShare(
            _type_name(tp),
            n,
            count,
            tuple(sorted(holders_of.get(tp, ()), key=lambda hn: -hn[1])[:top_holders]),
        )
        for tp, (n, count) in by_type.items()
    ]
    shares.sort(key=lambda s: -s.copied)
    holder_shares = sorted(
        (HolderShare(h, n) for h, n in by_holder.items()), key=lambda h: -h.copied
    )
    return Attribution(
        pid=os.getpid(),
        page_size=page_size,
        copied_pages=len(pages),
        types=tuple(shares),
        holders=tuple(holder_shares),
        objects_scanned=scanned,
    )


def copied_objects(*, since: PageSnapshot | None = None) -> Attribution:
    """Which Python objects of this process sit on copied (exclusively mapped) heap pages.

    Call it in a forked child. With ``since`` (a [`page_snapshot()`][forkmem.testing.page_snapshot]
    taken earlier in the same process), only pages that were shared with the parent then and are
    copied now count: real copy-on-write copies. Without it, every page the child owns counts,
    including memory it allocated itself. The walk itself touches every object, so it copies
    pages too: take it last. Raises [`UnsupportedPlatform`][forkmem.UnsupportedPlatform] without
    ``/proc/self/pagemap``, [`InvalidArgument`][forkmem.InvalidArgument] when ``since`` is not a
    snapshot of this process.
    """
    if since is not None and not isinstance(since, PageSnapshot):
        raise InvalidArgument(
            f"since must be a PageSnapshot from page_snapshot(), not {type(since).__name__}"
        )
    pages, page_size = copied_pages(since)
    exclude = () if since is None else (since, since.regions, *(r[2] for r in since.regions))
    return attribute(pages, page_size, exclude=exclude)
