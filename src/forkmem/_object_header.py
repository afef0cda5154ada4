"""The object header of the running interpreter, probed: where a forked child's reference-count
writes go, and how this CPython marks an object immortal (PEP 683).

On 64-bit default (GIL) builds the low 32 bits of the header's first word are the count and
``_Py_IsImmortal`` is ``(int32_t)low32 < 0`` on 3.12 through 3.15 (Include/refcount.h). What
``Py_INCREF`` does with such a count differs: 3.12/3.13 add one and stop only when the low half
wraps to 0 (so the value must be ``UINT32_MAX``); 3.14+ stop at or above
``_Py_IMMORTAL_INITIAL_REFCNT`` (``3 << 30``), the value the runtime itself writes, which leaves
about a billion increments of headroom for old stable-ABI extensions that still do a plain
``ob_refcnt++``. 3.14+ keep ``ob_overflow`` and ``ob_flags`` in the upper half, and their
interpreter loop decides from ``ob_flags & _Py_IMMORTAL_FLAGS``, not from the count, whether a
reference it takes over needs a ``DECREF`` later (``PyStackRef_FromPyObjectSteal``, then an
unchecked ``Py_DECREF_MORTAL``): without that bit every such read would write the count. So,
like the runtime's own ``_Py_SetImmortalUntracked``, the marker ORs that one bit into
``ob_flags`` and leaves every other bit of the upper half as it was.

Which value and bit work is *probed* (`layout()`) by running the interpreter's own
INCREF/DECREF and reference hand-over on throwaway objects, never derived from the version.
Memory is read and written through one uint32 memoryview over the whole address space.
"""

from __future__ import annotations

import sys
from typing import NamedTuple

from forkmem.errors import UnsupportedRuntime

__all__ = ["Layout", "address_view", "check_runtime", "hash_view", "layout", "unsupported_reason"]

ALL_ONES = 0xFFFFFFFF  # a 32-bit word with every bit set: hash == -1, or 3.12's immortal value
IMMORTAL_SIGN = 0x80000000  # _Py_IsImmortal: the low 32 bits read as a negative int32
_IMMORTAL_FLAG = 1 << 16  # ob_flags' _Py_IMMORTAL_FLAGS, as seen in the upper 32-bit word
# (low word, bits to OR into the upper word) to try, preferred first: 3.14+'s own
# representation (_Py_IMMORTAL_INITIAL_REFCNT plus the flag), the same without the flag, then
# 3.12/3.13's _Py_IMMORTAL_REFCNT, whose upper word is still part of the count. The probe keeps
# the first one the interpreter leaves alone.
_CANDIDATES = ((3 << 30, _IMMORTAL_FLAG), (3 << 30, 0), (ALL_ONES, 0))
HASH_WORD = 6  # PyASCIIObject.hash sits at byte 24 (refcnt, type, length before it): word 6

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
    """The uint32 view of the address space (`address_view()`)."""
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
    """`address_view()` where ``PyASCIIObject.hash`` is at word 6 as probed, else None
    (then every str is hashed: ``hash()`` of a str whose hash is cached only reads it)."""
    global _hash_view, _hash_probed
    if not _hash_probed:
        _hash_probed, _hash_view = True, None
        view = address_view()
        # A str built at run time has no cached hash (-1) until hash() stores it.
        probe = "".join(["forkmem", "-probe-", str(id(_hash_probed))])
        at = (id(probe) >> 2) + HASH_WORD
        if view is not None and view[at] == ALL_ONES == view[at + 1]:
            h = hash(probe) & (2**64 - 1)
            if view[at] == h & ALL_ONES and view[at + 1] == h >> 32:
                _hash_view = view
    return _hash_view


def layout() -> Layout | str:
    """Probe the running interpreter once: a `Layout`, or why it cannot be immortalized.

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
        elif view[id(None) >> 2] < IMMORTAL_SIGN:
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
    """Raise `UnsupportedRuntime` unless immortalization is safe here."""
    found = layout()
    if isinstance(found, str):
        raise UnsupportedRuntime(found)
    return found
