"""Make the live heap immortal (PEP 683) on CPython 3.12/3.13, and precompute str hashes.

Why: a forked child that only *reads* an object still writes its reference count, and that
write copies the whole page. CPython 3.12 and 3.13 (64-bit, default GIL build) never write the
count of an immortal object: ``Py_INCREF`` adds one to the low 32 bits of ``ob_refcnt`` and
stops when that wraps to 0, ``Py_DECREF`` returns early when ``_Py_IsImmortal`` holds, i.e.
``(int32_t)low32 < 0`` (Include/object.h in both versions; ``_Py_IMMORTAL_REFCNT`` is
``UINT_MAX``). So we write ``0xFFFFFFFF`` into the low 32 bits only and leave the upper half
alone (3.14 keeps flag bits there).

The mark doubles as the walk's visited set: an object whose low half already reads negative is
either ours or was immortal before, and either way is not visited again. Nothing proportional
to the heap is kept besides the work list of objects still to visit.

Memory is read and written through one memoryview over the whole address space, built with
ctypes; every per-object step runs inside ``map``/``compress`` loops, so the walk costs about a
microsecond per object instead of a Python-level loop with a ctypes call per object.
"""

from __future__ import annotations

import gc
import sys
import types
from collections import Counter, deque
from itertools import chain, compress, repeat
from operator import add, eq, is_, lt, not_, rshift
from typing import Any, NamedTuple

from forkmem.errors import UnsupportedRuntime

if sys.version_info >= (3, 11):
    from operator import call
else:  # immortalization needs 3.12+; this stand-in only keeps the module importable

    def call(func: Any, arg: Any) -> Any:
        return func(arg)


__all__ = [
    "ImmortalizeResult",
    "address_view",
    "check_runtime",
    "hash_reachable_strings",
    "immortalize",
    "unsupported_reason",
]

_IMMORTAL = 0xFFFFFFFF  # _Py_IMMORTAL_REFCNT, 64-bit 3.12/3.13: all of the low 32 bits set
_SIGN = 0x80000000  # _Py_IsImmortal: the low 32 bits read as a negative int32
_HASH_WORD = 6  # PyASCIIObject.hash sits at byte 24 (refcnt, type, length before it): word 6
_BATCH = 2048  # objects per gc.get_referents() call: big enough to amortise, small to stay flat

_TPFLAGS_HEAPTYPE = 1 << 9
_TPFLAGS_DICT_SUBCLASS = 1 << 29
_TPFLAGS_TYPE_SUBCLASS = 1 << 31

# Read type attributes through type's own descriptors: a metaclass cannot run code here.
_type_flags = type.__dict__["__flags__"].__get__
_type_mro = type.__dict__["__mro__"].__get__
_type_dict = type.__dict__["__dict__"].__get__
_type_weakrefoffset = type.__dict__["__weakrefoffset__"].__get__
_type_name = type.__dict__["__name__"].__get__
_type_qualname = type.__dict__["__qualname__"].__get__

_view: memoryview | None = None
_view_made = False


def address_view() -> memoryview | None:
    """A uint32 memoryview whose item ``addr >> 2`` is the 32-bit word at ``addr``.

    None where the object layout this module assumes does not hold (not CPython, not 64-bit
    little-endian, or a ``Py_TRACE_REFS`` build whose header has two extra pointers).
    """
    global _view, _view_made
    if _view_made:
        return _view
    _view_made = True
    if (
        sys.implementation.name != "cpython"
        or sys.maxsize <= 2**32
        or sys.byteorder != "little"
        or hasattr(sys, "getobjects")
    ):
        return None
    import ctypes

    # An array type spanning every address; from_address(0) maps it without owning anything.
    words = (ctypes.c_uint32 * (sys.maxsize // 4)).from_address(0)
    view = memoryview(words).cast("B").cast("I")
    # Sanity check on an object we know: a fresh list has reference count 1 (our name), and
    # its type pointer is the next word pair.
    probe: list[int] = []
    if view[id(probe) >> 2] != 1 or view[(id(probe) >> 2) + 1] != 0:
        return None
    _view = view
    return view


def unsupported_reason() -> str | None:
    """Why this interpreter cannot be immortalized, or None when it can."""
    impl = sys.implementation.name
    if impl != "cpython":
        return f"immortalization needs CPython 3.12 or 3.13; this is {impl}"
    major, minor = sys.version_info[:2]
    if (major, minor) < (3, 12):
        return (
            f"CPython {major}.{minor} has no immortal objects (PEP 683 arrived in 3.12); "
            "call warmup() without immortalize=True"
        )
    if (major, minor) > (3, 13):
        return (
            f"immortalization is only tested on CPython 3.12 and 3.13, not {major}.{minor} "
            "(3.14 changed the reference-count word: flag bits, a different immortal value)"
        )
    import sysconfig

    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        return (
            "free-threaded CPython splits the reference count (ob_ref_local/ob_ref_shared); "
            "immortalization supports the default (GIL) build only"
        )
    if sys.maxsize <= 2**32:
        return "immortalization needs a 64-bit CPython (32-bit builds use a different value)"
    if sys.byteorder != "little":
        return "immortalization needs a little-endian machine"
    if hasattr(sys, "gettotalrefcount") or hasattr(sys, "getobjects"):
        return "immortalization does not support debug builds (Py_REF_DEBUG / Py_TRACE_REFS)"
    return None


def check_runtime() -> memoryview:
    """Raise :class:`~forkmem.errors.UnsupportedRuntime` unless immortalization is safe here."""
    reason = unsupported_reason()
    if reason is not None:
        raise UnsupportedRuntime(reason)
    view = address_view()
    # None is immortal on 3.12/3.13: low half 0xFFFFFFFF, high half 0. Anything else means the
    # header is not what we think, and we must not write into it.
    if view is None or view[id(None) >> 2] != _IMMORTAL or view[(id(None) >> 2) + 1] != 0:
        raise UnsupportedRuntime(
            "this CPython's object header does not match 3.12/3.13's (None is not immortal "
            "as expected); refusing to write reference counts"
        )
    return view


def _hash_unhashed(view: memoryview | None, strs: list[Any]) -> int:
    """hash() every exact str of ``strs`` whose hash is not cached yet; return how many."""
    if not strs:
        return 0
    if view is None:
        deque(map(hash, strs), 0)
        return len(strs)
    # Unhashed means PyASCIIObject.hash == -1; its low word is enough (a real hash with all 32
    # low bits set costs one extra hash() call). The chain is lazy: each str is checked right
    # before it is hashed, so a str listed twice is hashed and counted once.
    words = map(add, map(rshift, map(id, strs), repeat(2)), repeat(_HASH_WORD))
    unhashed = compress(strs, map(eq, map(view.__getitem__, words), repeat(_IMMORTAL)))
    return len(list(map(hash, unhashed)))


def _code_parts(code: types.CodeType) -> list[Any]:
    # Code objects are not gc containers: gc.get_referents() reports nothing inside them.
    parts: list[Any] = [code.co_consts, code.co_names, code.co_filename, code.co_name]
    parts.append(code.co_linetable)
    if sys.version_info >= (3, 11):
        parts.append(code.co_qualname)
        parts.append(code.co_exceptiontable)
    return parts


_NESTED = frozenset({tuple, dict, types.CodeType})


def _exact(objs: list[Any], kinds: list[type], tp: type) -> list[Any]:
    return list(compress(objs, map(is_, kinds, repeat(tp))))


def hash_reachable_strings(roots: list[Any]) -> int:
    """Precompute the hash of every str that a tracked object refers to; no marking, no writes
    besides the hash itself. Returns the number of hashes computed."""
    view = address_view()
    hashed = 0
    for start in range(0, len(roots), _BATCH):
        chunk = roots[start : start + _BATCH]
        refs: list[Any] = gc.get_referents(*chunk)
        # str keys of unicode-keyed dicts are invisible to tp_traverse.
        refs.extend(
            chain.from_iterable(map(dict.keys, _exact(chunk, list(map(type, chunk)), dict)))
        )
        while refs:
            kinds = list(map(type, refs))
            hashed += _hash_unhashed(view, _exact(refs, kinds, str))
            # Containers gc does not track (tuples and dicts of atoms, code objects) are not
            # among the roots: look inside them too.
            nested = list(compress(refs, map(_NESTED.__contains__, kinds)))
            hidden = list(compress(nested, map(not_, map(gc.is_tracked, nested))))
            if not hidden:
                break
            hidden_kinds = list(map(type, hidden))
            refs = gc.get_referents(*hidden)
            refs.extend(chain.from_iterable(map(dict.keys, _exact(hidden, hidden_kinds, dict))))
            codes = _exact(hidden, hidden_kinds, types.CodeType)
            refs.extend(chain.from_iterable(map(_code_parts, codes)))
    return hashed


class ImmortalizeResult(NamedTuple):
    """Counts from one :func:`immortalize` walk."""

    objects: int
    bytes: int
    strings_hashed: int
    skipped: dict[str, int]


# Per-type decision, computed once per type.
_PLAIN = 0
_EXTRAS = 1  # referents tp_traverse does not report (code objects, heap type names)
_WEAKREF = 2  # instances may be weakly referenced: leave mortal if a callback waits on them
_SKIP = 4

_FRAME_TYPES = (types.FrameType, types.TracebackType)
_RUNNING_TYPES = (types.GeneratorType, types.CoroutineType, types.AsyncGeneratorType)


class _Policy(dict[type, int]):
    """type -> flags; ``reasons`` holds why a skipped type stays mortal."""

    def __init__(self) -> None:
        super().__init__()
        self.reasons: dict[type, str] = {}

    def __missing__(self, tp: type) -> int:
        flags, reason = _classify(tp)
        self[tp] = flags
        if reason is not None:
            self.reasons[tp] = reason
        return flags


def _classify(tp: type) -> tuple[int, str | None]:
    if tp in _FRAME_TYPES:
        return _SKIP, "frame or traceback: may belong to running code"
    if tp in _RUNNING_TYPES:
        return _SKIP, "generator or coroutine: may be running, and finalizes itself"
    if any("__del__" in _type_dict(k) for k in _type_mro(tp)):
        # Python __del__ and C tp_finalize (exposed as __del__): an immortal object would never
        # run it, so files would not be flushed, sockets not closed.
        return _SKIP, "has a finalizer (__del__ / tp_finalize)"
    tp_flags = _type_flags(tp)
    if tp is types.CodeType or tp_flags & _TPFLAGS_TYPE_SUBCLASS:
        # Types are weakly referenced by their bases and ABC caches; immortal classes simply
        # stay registered, which is what a class alive at warmup does anyway.
        return _EXTRAS, None
    flags = _PLAIN
    if tp is not dict and tp_flags & _TPFLAGS_DICT_SUBCLASS:
        flags |= _EXTRAS  # exact dicts get their keys in bulk; subclasses one by one
    if _type_weakrefoffset(tp):
        flags |= _WEAKREF
    return flags, None


def _extras(obj: Any) -> list[Any]:
    if type(obj) is types.CodeType:
        return _code_parts(obj)
    if _type_flags(type(obj)) & _TPFLAGS_DICT_SUBCLASS:
        return list(dict.keys(obj))
    if _type_flags(obj) & _TPFLAGS_HEAPTYPE:
        # A heap type's name objects; a static type would build a new str on every access.
        return [_type_name(obj), _type_qualname(obj)]
    return []


_C_METHODS = (types.MethodDescriptorType, types.WrapperDescriptorType)


class _Sizer(dict[type, Any]):
    """type -> the C ``__sizeof__`` to use for its instances (never a Python-level override)."""

    def __missing__(self, tp: type) -> Any:
        sizeof: Any = object.__sizeof__
        for klass in _type_mro(tp):
            found = _type_dict(klass).get("__sizeof__")
            if found is not None:
                if type(found) in _C_METHODS:
                    sizeof = found
                break
        self[tp] = sizeof
        return sizeof


_ref_callback = None


def _has_weakref_callback(obj: Any) -> bool:
    import weakref

    global _ref_callback
    if _ref_callback is None:
        _ref_callback = weakref.ref.__dict__["__callback__"].__get__
    for ref in weakref.getweakrefs(obj):
        # A proxy's callback cannot be read without touching the referent: assume one.
        if not issubclass(type(ref), weakref.ref) or _ref_callback(ref) is not None:
            return True
    return False


def immortalize(roots: list[Any], *, hash_strings: bool = True) -> ImmortalizeResult:
    """Make ``roots`` and everything reachable from them immortal, except what must stay mortal.

    ``roots`` is consumed (used as the work list). The caller has checked the runtime with
    :func:`check_runtime`; this function checks again because it writes raw memory.
    """
    view = check_runtime()
    from weakref import getweakrefcount

    policy = _Policy()
    sizer = _Sizer()
    skipped: dict[int, str] = {}
    getitem, setitem = view.__getitem__, view.__setitem__
    objects = size = hashed = 0
    todo = roots
    was_enabled = gc.isenabled()
    gc.disable()  # no collection between reading and writing counts; also faster
    try:
        while todo:
            chunk = todo[-_BATCH:]
            del todo[-_BATCH:]
            # Not yet immortal, each object once (duplicates inside a chunk share an id).
            fresh = list(
                compress(
                    chunk,
                    map(lt, map(getitem, map(rshift, map(id, chunk), repeat(2))), repeat(_SIGN)),
                )
            )
            if not fresh:
                continue
            if len(fresh) > 1:
                fresh = list(dict(zip(map(id, fresh), fresh, strict=True)).values())
            flags = list(map(policy.__getitem__, map(type, fresh)))
            extras: list[Any] = []
            if any(flags):
                kept = list(compress(fresh, map(not_, flags)))
                for obj in compress(fresh, flags):
                    tp = type(obj)
                    flag = policy[tp]
                    if flag & _SKIP:
                        skipped[id(obj)] = policy.reasons[tp]
                        continue
                    if flag & _WEAKREF and getweakrefcount(obj) and _has_weakref_callback(obj):
                        skipped[id(obj)] = "weakly referenced with a callback waiting for it"
                        continue
                    kept.append(obj)
                    if flag & _EXTRAS:
                        extras.extend(_extras(obj))
            else:
                kept = fresh
            if not kept:
                continue
            deque(map(setitem, map(rshift, map(id, kept), repeat(2)), repeat(_IMMORTAL)), 0)
            kinds = list(map(type, kept))
            strs = _exact(kept, kinds, str)
            if hash_strings:
                hashed += _hash_unhashed(view, strs)
            objects += len(kept)
            size += sum(map(call, map(sizer.__getitem__, kinds), kept))
            children: list[Any] = gc.get_referents(*kept)
            children.extend(chain.from_iterable(map(dict.keys, _exact(kept, kinds, dict))))
            children.extend(extras)
            todo.extend(children)
    finally:
        if was_enabled:
            gc.enable()
    return ImmortalizeResult(objects, size, hashed, dict(Counter(skipped.values())))
