"""Make the live heap immortal (PEP 683) on CPython 3.12+, and precompute str hashes.

Why: a forked child that only *reads* an object still writes its reference count, and that
write copies the whole page. CPython never writes the count of an immortal object; how this
interpreter marks one is probed by `forkmem._object_header` (values differ between 3.12/3.13
and 3.14+), and the walk writes exactly that.

The mark doubles as the walk's visited set: an object whose low half already reads negative is
either ours or was immortal before, and either way is not visited again. Nothing proportional
to the heap is kept besides the work list of objects still to visit.

Every per-object step runs inside ``map``/``compress`` loops over the header view, so the walk
costs about a microsecond per object instead of a Python-level loop with a ctypes call per
object.
"""

from __future__ import annotations

import gc
import sys
import types
from collections import Counter, deque
from itertools import chain, compress, repeat
from operator import add, eq, is_, lt, not_, or_, rshift
from typing import Any, NamedTuple

from forkmem._const_loads import retag
from forkmem._object_header import (
    ALL_ONES,
    HASH_WORD,
    IMMORTAL_SIGN,
    check_runtime,
    hash_view,
    unsupported_reason,
)
from forkmem._shared_keys import immortalize_keys

if sys.version_info >= (3, 11):
    from operator import call
else:  # immortalization needs 3.12+; this stand-in only keeps the module importable

    def call(func: Any, arg: Any) -> Any:
        return func(arg)


# check_runtime and unsupported_reason are re-exported: callers ask the module they use.
__all__ = [
    "ImmortalizeResult",
    "check_runtime",
    "hash_reachable_strings",
    "immortalize",
    "unsupported_reason",
]

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
    words = map(add, map(rshift, map(id, strs), repeat(2)), repeat(HASH_WORD))
    unhashed = compress(strs, map(eq, map(view.__getitem__, words), repeat(ALL_ONES)))
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
    """Counts from one `immortalize()` walk; ``shared_keys``: classes' key tables made
    immortal (see `forkmem._shared_keys`)."""

    objects: int
    bytes: int
    strings_hashed: int
    skipped: dict[str, int]
    shared_keys: int = 0


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
    `check_runtime()`; this function checks again because it writes raw memory.
    """
    found = check_runtime()
    view, immortal, flag_bits, str_view = found.view, found.immortal, found.flags, hash_view()
    from weakref import getweakrefcount

    policy = _Policy()
    sizer = _Sizer()
    skipped: dict[int, str] = {}
    getitem, setitem = view.__getitem__, view.__setitem__
    objects = size = hashed = 0
    classes: list[type] = []  # heap types, whose shared key tables are made immortal after
    codes: list[types.CodeType] = []
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
                    map(
                        lt,
                        map(getitem, map(rshift, map(id, chunk), repeat(2))),
                        repeat(IMMORTAL_SIGN),
                    ),
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
                        if _type_flags(tp) & _TPFLAGS_TYPE_SUBCLASS and (
                            _type_flags(obj) & _TPFLAGS_HEAPTYPE
                        ):
                            classes.append(obj)
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
            codes.extend(_exact(kept, kinds, types.CodeType))
            strs = _exact(kept, kinds, str)
            if hash_strings:
                hashed += _hash_unhashed(str_view, strs)
            objects += len(kept)
            size += sum(map(call, map(sizer.__getitem__, kinds), kept))
            children: list[Any] = gc.get_referents(*kept)
            children.extend(chain.from_iterable(map(dict.keys, _exact(kept, kinds, dict))))
            children.extend(extras)
            todo.extend(children)
        shared_keys = immortalize_keys(classes)
        # 3.14: code that ran while its constants were mortal loads them with the unchecked
        # form; now that they are immortal, give it the immortal one (see _const_loads).
        retag(codes)
    finally:
        if was_enabled:
            gc.enable()
    return ImmortalizeResult(objects, size, hashed, dict(Counter(skipped.values())), shared_keys)
