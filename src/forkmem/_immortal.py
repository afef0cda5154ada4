"""Make the live heap immortal (PEP 683) on CPython 3.12+, and precompute str hashes.

Why: a forked child that only *reads* an object still writes its reference count, and that
write copies the whole page. CPython never writes the count of an immortal object. On 64-bit
default (GIL) builds the low 32 bits of the header's first word are the count and
``_Py_IsImmortal`` is ``(int32_t)low32 < 0`` on 3.12 through 3.15 (Include/refcount.h). What
``Py_INCREF`` does with such a count differs: 3.12/3.13 add one and stop only when the low half
wraps to 0 (so the value must be ``UINT32_MAX``); 3.14+ stop at or above
``_Py_IMMORTAL_INITIAL_REFCNT`` (``3 << 30``), the value the runtime itself writes, which leaves
about a billion increments of headroom for old stable-ABI extensions that still do a plain
``ob_refcnt++``. 3.14+ keep ``ob_overflow`` and ``ob_flags`` in the upper half, and their
interpreter loop decides from ``ob_flags & _Py_IMMORTAL_FLAGS``, not from the count, whether a
reference it takes over needs a ``DECREF`` later (``PyStackRef_FromPyObjectSteal``, then an
unchecked ``Py_DECREF_MORTAL``): without that bit every such read would write the count. So,
like the runtime's own ``_Py_SetImmortalUntracked``, the walk ORs that one bit into ``ob_flags``
and leaves every other bit of the upper half as it was. Which value and bit work is *probed*
(:func:`layout`) by running the interpreter's own INCREF/DECREF and reference hand-over on a
throwaway object, never derived from the version.

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
from operator import add, eq, is_, lt, not_, or_, rshift
from typing import Any, NamedTuple

from forkmem.errors import UnsupportedRuntime

if sys.version_info >= (3, 11):
    from operator import call
else:  # immortalization needs 3.12+; this stand-in only keeps the module importable

    def call(func: Any, arg: Any) -> Any:
        return func(arg)


__all__ = [
    "ImmortalizeResult",
    "Layout",
    "address_view",
    "check_runtime",
    "hash_reachable_strings",
    "hash_view",
    "immortalize",
    "layout",
    "unsupported_reason",
]

_ALL_ONES = 0xFFFFFFFF  # a 32-bit word with every bit set: hash == -1, or 3.12's immortal value
_SIGN = 0x80000000  # _Py_IsImmortal: the low 32 bits read as a negative int32
_IMMORTAL_FLAG = 1 << 16  # ob_flags' _Py_IMMORTAL_FLAGS, as seen in the upper 32-bit word
# (low word, bits to OR into the upper word) to try, preferred first: 3.14+'s own
# representation (_Py_IMMORTAL_INITIAL_REFCNT plus the flag), the same without the flag, then
# 3.12/3.13's _Py_IMMORTAL_REFCNT, whose upper word is still part of the count. The probe keeps
# the first one the interpreter leaves alone.
_CANDIDATES = ((3 << 30, _IMMORTAL_FLAG), (3 << 30, 0), (_ALL_ONES, 0))
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

    None where the object header is not ``{refcount word, type pointer}`` as probed on a fresh
    list (not CPython, not 64-bit little-endian, a ``Py_TRACE_REFS`` build whose header has two
    extra pointers, or a free-threaded build whose first word is the owning thread).
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
    # A fresh list has reference count 1 (our name) and an empty upper half (3.12/3.13: the
    # count's high bits; 3.14+: ob_overflow and ob_flags), then the pointer to its type.
    probe: list[int] = []
    at = id(probe) >> 2
    if view[at] != 1 or view[at + 1] != 0 or view[at + 2] | view[at + 3] << 32 != id(list):
        return None
    _view = view
    return view


class Layout(NamedTuple):
    """What the probe found out about this interpreter's object header."""

    view: memoryview
    """The uint32 view of the address space (:func:`address_view`)."""
    immortal: int
    """The low-32-bit value to write: one that ``Py_INCREF`` and ``Py_DECREF`` leave alone."""
    flags: int
    """Bits to OR into the upper 32-bit word (3.14+: ``_Py_IMMORTAL_FLAGS``), or 0."""


_layout: Layout | str | None = None  # a str is the reason the probe refused


def _static_reason() -> str | None:
    impl = sys.implementation.name
    if impl != "cpython":
        return f"immortalization needs CPython 3.12 or newer; this is {impl}"
    major, minor = sys.version_info[:2]
    if (major, minor) < (3, 12):
        return (
            f"CPython {major}.{minor} has no immortal objects (PEP 683 arrived in 3.12); "
            "call warmup() without immortalize=True"
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


def _runtime_immortal_value(view: memoryview) -> tuple[int, int] | None:
    """The (low, upper) words CPython's own PyUnstable_SetImmortal (3.15+) leaves on a fresh
    object, or None without it.

    It only accepts a uniquely referenced object, so it cannot immortalize a heap; as a probe
    it tells which representation the runtime itself considers immortal.
    """
    import ctypes

    set_immortal = getattr(ctypes.pythonapi, "PyUnstable_SetImmortal", None)
    if set_immortal is None:
        return None
    set_immortal.argtypes = [ctypes.c_void_p]
    set_immortal.restype = ctypes.c_int
    probe: list[int] = []  # referenced by this name only: "uniquely referenced"
    if set_immortal(id(probe)) != 1:
        return None
    at = id(probe) >> 2
    return int(view[at]), int(view[at + 1])


def _left_alone(view: memoryview, value: int, flags: int) -> bool:
    """Whether an object marked with ``value`` (and ``flags``) stays untouched by the
    interpreter: C-level ``Py_IncRef``/``Py_DecRef``, and the eval loop taking over and
    dropping references to it (subscript, iteration), and whether the runtime calls it immortal.

    The probe is a throwaway list nothing else refers to; once marked it is never freed (a few
    dozen bytes, once per process).
    """
    import ctypes

    incref, decref = ctypes.pythonapi.Py_IncRef, ctypes.pythonapi.Py_DecRef
    incref.argtypes = decref.argtypes = [ctypes.c_void_p]
    incref.restype = decref.restype = None
    probe: list[int] = []
    holder = [probe]
    at = id(probe) >> 2
    if view[at] != 2 or view[at + 1] != 0:  # our name and the holder's item
        return False
    view[at] = value
    if flags:
        view[at + 1] = view[at + 1] | flags
    incref(id(probe))
    counted = view[at] != value
    decref(id(probe))
    decref(id(probe))
    for _ in range(3):  # before and after the loop specializes these instructions
        item = holder[0]
        first = next(iter(holder))
        del item, first
    is_immortal = getattr(sys, "_is_immortal", None)
    return (
        not counted
        and view[at] == value
        and view[at + 1] == flags
        and (is_immortal is None or bool(is_immortal(probe)))
    )


def _probe_immortal_value(view: memoryview) -> tuple[int, int] | None:
    """The first candidate (low word, flags) the interpreter leaves alone, or None."""
    for value, flags in _CANDIDATES:
        if _left_alone(view, value, flags):
            return value, flags
    return None


_hash_view: memoryview | None = None
_hash_probed = False


def hash_view() -> memoryview | None:
    """:func:`address_view` where ``PyASCIIObject.hash`` is at word 6 as probed, else None
    (then every str is hashed: ``hash()`` of a str whose hash is cached only reads it)."""
    global _hash_view, _hash_probed
    if not _hash_probed:
        _hash_probed, _hash_view = True, None
        view = address_view()
        # A str built at run time has no cached hash (-1) until hash() stores it.
        probe = "".join(["forkmem", "-probe-", str(id(_hash_probed))])
        at = (id(probe) >> 2) + _HASH_WORD
        if view is not None and view[at] == _ALL_ONES == view[at + 1]:
            h = hash(probe) & (2**64 - 1)
            if view[at] == h & _ALL_ONES and view[at + 1] == h >> 32:
                _hash_view = view
    return _hash_view


def layout() -> Layout | str:
    """Probe the running interpreter once: a :class:`Layout`, or why it cannot be immortalized.

    Refuses, by probing rather than by version number, anything whose header is not the 64-bit
    default build's: free-threaded and debug builds, other implementations, and a count word
    that does not stay put at any known immortal value.
    """
    global _layout
    if _layout is not None:
        return _layout
    reason = _static_reason()
    if reason is None:
        view = address_view()
        if view is None:
            reason = (
                "this CPython's object header is not a reference-count word followed by the "
                "type pointer; refusing to write reference counts"
            )
        elif view[id(None) >> 2] < _SIGN:
            reason = "None is not immortal here: this CPython has no immortal objects"
        else:
            found = _probe_immortal_value(view)
            runtime = _runtime_immortal_value(view)
            if found is None:
                reason = (
                    "no known immortal reference count is left alone by this CPython's "
                    "Py_INCREF/Py_DECREF and eval loop; refusing to write reference counts"
                )
            elif runtime is not None and runtime != found:
                reason = (
                    f"PyUnstable_SetImmortal leaves {runtime[0]:#x}/{runtime[1]:#x} (count/"
                    f"upper word), the probe found {found[0]:#x}/{found[1]:#x}; refusing to "
                    "write reference counts"
                )
            else:
                _layout = Layout(view, *found)
                return _layout
    _layout = reason
    return reason


def unsupported_reason() -> str | None:
    """Why this interpreter cannot be immortalized, or None when it can (probes once)."""
    found = layout()
    return found if isinstance(found, str) else None


def check_runtime() -> Layout:
    """Raise :class:`~forkmem.errors.UnsupportedRuntime` unless immortalization is safe here."""
    found = layout()
    if isinstance(found, str):
        raise UnsupportedRuntime(found)
    return found


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
    unhashed = compress(strs, map(eq, map(view.__getitem__, words), repeat(_ALL_ONES)))
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
    view = hash_view()
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
    found = check_runtime()
    view, immortal, flag_bits, str_view = found.view, found.immortal, found.flags, hash_view()
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
            words = list(map(rshift, map(id, kept), repeat(2)))
            deque(map(setitem, words, repeat(immortal)), 0)
            if flag_bits:  # one bit ORed in; ob_overflow and the other flags keep their values
                upper = list(map(add, words, repeat(1)))
                deque(map(setitem, upper, map(or_, map(getitem, upper), repeat(flag_bits))), 0)
            kinds = list(map(type, kept))
            strs = _exact(kept, kinds, str)
            if hash_strings:
                hashed += _hash_unhashed(str_view, strs)
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
