"""Which cyclic garbage collector this interpreter runs, and its current state.

The collector is detected from the runtime, not from the version number: CPython 3.14.0-3.14.4
ship an incremental collector and 3.14.5 the generational one again, and free-threaded builds
have a third design. What matters for forking: on the generational collector ``gc.freeze()`` is
an O(1) list splice; on the incremental and free-threaded ones it walks the heap.
"""

from __future__ import annotations

import gc
import sys
from dataclasses import dataclass
from typing import Literal

__all__ = ["CollectorKind", "GcInfo", "gc_info"]

CollectorKind = Literal["generational", "incremental", "free-threaded"]


@dataclass(frozen=True, slots=True)
class GcInfo:
    """A snapshot of the cyclic garbage collector's configuration and state."""

    collector: CollectorKind
    """``"generational"`` (3 generations, CPython <= 3.13 and 3.14.5+), ``"incremental"``
    (young + old, CPython 3.14.0-3.14.4) or ``"free-threaded"`` (no generations)."""
    enabled: bool
    """``gc.isenabled()``."""
    thresholds: tuple[int, ...]
    """``gc.get_threshold()``; on the incremental collector the third value is always 0."""
    counts: tuple[int, ...]
    """``gc.get_count()``."""
    freeze_count: int
    """``gc.get_freeze_count()``: objects in the permanent generation (costs a list walk). Not
    always 0 without a freeze: CPython 3.12's collector parks the immortal objects it meets
    there (a few hundred after start-up)."""
    immortal_objects: bool
    """Whether the runtime has immortal objects (PEP 683, CPython 3.12+), detected from the
    reference count of ``None``."""
    gil_enabled: bool
    """Whether the GIL is on (always True except on a free-threaded build running without it)."""
    freeze_is_constant_time: bool
    """True where ``gc.freeze()``/``gc.unfreeze()`` are O(1) list splices (generational
    collector); False where they walk every tracked object."""


def _free_threaded_build() -> bool:
    import sysconfig

    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def _threshold2_is_ignored() -> bool:
    """True when the runtime discards the third threshold, as the incremental collector does."""
    t0, t1, t2 = gc.get_threshold()[:3]
    if t2 != 0:
        return False
    # A generational collector keeps whatever third value it is given; the incremental one
    # ignores it and reports 0. Probe with a harmless value and put the original back.
    gc.set_threshold(t0, t1, 1)
    try:
        return gc.get_threshold()[2] == 0
    finally:
        gc.set_threshold(t0, t1, t2)


_kind: CollectorKind | None = None


def collector_kind() -> CollectorKind:
    """Detect the collector design of the running interpreter (probed once, then cached)."""
    global _kind
    if _kind is None:
        if _free_threaded_build():
            _kind = "free-threaded"
        elif len(gc.get_threshold()) >= 3 and _threshold2_is_ignored():
            _kind = "incremental"
        else:
            _kind = "generational"
    return _kind


def _has_immortal_objects() -> bool:
    is_immortal = getattr(sys, "_is_immortal", None)
    if is_immortal is not None:
        return bool(is_immortal(None))
    # Immortal objects carry a refcount near 2**32 (or 2**30 on 32-bit) that INCREF leaves alone;
    # before PEP 683 None's refcount is a plain count, far below that.
    return sys.getrefcount(None) >= 1 << 29


def gc_info() -> GcInfo:
    """Describe the garbage collector of the running interpreter.

    >>> import forkmem
    >>> forkmem.gc_info().collector in ("generational", "incremental", "free-threaded")
    True
    """
    kind = collector_kind()
    is_gil_enabled = getattr(sys, "_is_gil_enabled", None)
    return GcInfo(
        collector=kind,
        enabled=gc.isenabled(),
        thresholds=tuple(gc.get_threshold()),
        counts=tuple(gc.get_count()),
        freeze_count=gc.get_freeze_count(),
        immortal_objects=_has_immortal_objects(),
        gil_enabled=True if is_gil_enabled is None else bool(is_gil_enabled()),
        freeze_is_constant_time=kind == "generational",
    )
