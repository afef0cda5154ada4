"""Prepare the parent's heap once, before forking workers: [`warmup()`][forkmem.warm.warmup].

The steps, in order: a full collection; precomputing the hash of every reachable str (the first
``hash()`` of a str writes into it, which would otherwise happen in every child); optionally
making every live object immortal (CPython 3.12+), so no child ever writes a reference count;
``malloc_trim(0)``; filling the allocators' free holes, so a child allocates in new pages instead
of writing shared ones; and ``gc.freeze()``, so no child's collector touches the survivors.
"""

from __future__ import annotations

import gc
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from forkmem import _holes
from forkmem._validate import check_bool

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["WarmupReport", "warmup"]

_log = logging.getLogger("forkmem.warmup")


@dataclass(frozen=True, slots=True)
class WarmupReport:
    """What [`warmup()`][forkmem.warm.warmup] did.

    Attributes:
        immortalize: whether immortalization was asked for (and done).
        collected: unreachable objects the full collection found.
        previously_frozen: objects an earlier ``gc.freeze()`` had frozen; warmup unfroze them so
            they are collected, hashed and immortalized like the rest, then froze them again.
        frozen: objects in the permanent generation afterwards (``gc.get_freeze_count()``).
        strings_hashed: str objects whose hash was computed now (it was not cached yet).
        immortalized: objects made immortal (0 unless ``immortalize=True``).
        immortalized_bytes: their size as their C ``__sizeof__`` reports it (a list counts its
            item array, a dict its table; the gc header is not counted).
        skipped: objects left mortal on purpose, by reason, each object counted once.
        trim_released: ``malloc_trim(0)`` returned memory to the kernel.
        holes_filled: free pymalloc blocks and glibc chunks allocated (and kept) so that children
            allocate in new pages (0 unless ``fill_holes=True``).
        holes_filled_bytes: their bytes.
        steps_skipped: step name -> why it did not run (not asked for, not available here).
        seconds: step name -> wall-clock seconds (``collect``, ``hash_strings``,
            ``immortalize``, ``trim``, ``fill_holes``, ``freeze``); ``total_seconds`` sums them.
    """

    immortalize: bool
    collected: int
    previously_frozen: int
    frozen: int
    strings_hashed: int
    immortalized: int
    immortalized_bytes: int
    skipped: Mapping[str, int] = field(default_factory=dict)
    trim_released: bool = False
    holes_filled: int = 0
    holes_filled_bytes: int = 0
    steps_skipped: Mapping[str, str] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        """Wall-clock seconds of all steps together."""
        return sum(self.seconds.values())


def warmup(
    *,
    immortalize: bool = False,
    hash_strings: bool = True,
    trim: bool = True,
    fill_holes: bool = True,
) -> WarmupReport:
    """Prepare the current process's heap to be shared by forked children; call it once.

    Runs a full ``gc.collect()``, precomputes str hashes (``hash_strings``), makes every live
    object immortal (``immortalize``, CPython 3.12+), calls glibc's ``malloc_trim(0)``
    (``trim``), fills the allocators' free holes (``fill_holes``), then ``gc.freeze()``. Objects
    frozen by an earlier ``gc.freeze()`` are unfrozen first and go through the same steps.

    Immortal objects are never freed, not even when nothing refers to them any more, and their
    finalizers never run. Use ``immortalize=True`` once, before a long-lived fork loop, on what
    lives as long as the process anyway (imports, configuration, a preloaded app). Objects with
    a finalizer (``__del__``), frames, generators and coroutines, and objects a weak-reference
    callback waits for stay mortal; `WarmupReport.skipped` counts them.

    Args:
        immortalize: make every object alive now immortal, so children never write their
            reference counts. Raises [`UnsupportedRuntime`][forkmem.UnsupportedRuntime] (a
            ``NotImplementedError``) before changing anything unless the interpreter is a
            64-bit little-endian CPython 3.12+ release build with the GIL whose object header
            the runtime probe recognises (tested on 3.12, 3.13, 3.14 and 3.15).
        hash_strings: compute the hash of every str a live object refers to.
        trim: call ``malloc_trim(0)`` where glibc provides it.
        fill_holes: empty the type attribute cache (its run-time-built names would be freed by
            the children, in shared pages), then allocate, and keep for good, the free blocks
            left in pymalloc's partly used pools (every size class, 16 to 512 bytes) and the
            free chunks in glibc's bins (main arena, glibc 2.33+). A child's allocations then
            come from fresh pools and the top of the heap instead of writing (and copying) the
            shared pages around those holes. The memory was the parent's already;
            ``WarmupReport.holes_filled_bytes`` says how much.

    Returns:
        A [`WarmupReport`][forkmem.WarmupReport].

    Raises:
        InvalidArgument: an argument is not a bool.
        UnsupportedRuntime: ``immortalize=True`` on an interpreter it does not support.
    """
    for name, value in (
        ("immortalize", immortalize),
        ("hash_strings", hash_strings),
        ("trim", trim),
        ("fill_holes", fill_holes),
    ):
        check_bool(f"warmup({name}=...)", value)
    from forkmem import _immortal

    if immortalize:
        _immortal.check_runtime()  # refuse before touching anything

    seconds: dict[str, float] = {}
    steps_skipped: dict[str, str] = {}
    strings_hashed = immortalized = immortalized_bytes = 0
    skipped: dict[str, int] = {}
    trim_released = False
    holes_filled = holes_filled_bytes = 0

    was_enabled = gc.isenabled()
    gc.disable()  # nothing may be collected (or freed) between the steps
    try:
        start = time.perf_counter()
        previously_frozen = gc.get_freeze_count()
        if previously_frozen:
            gc.unfreeze()
        collected = gc.collect()
        seconds["collect"] = time.perf_counter() - start

        roots = gc.get_objects()
        if immortalize:
            start = time.perf_counter()
            result = _immortal.immortalize(roots, hash_strings=hash_strings)
            seconds["immortalize"] = time.perf_counter() - start
            immortalized, immortalized_bytes = result.objects, result.bytes
            strings_hashed, skipped = result.strings_hashed, result.skipped
            del result
            if not hash_strings:
                steps_skipped["hash_strings"] = "hash_strings=False"
        else:
            steps_skipped["immortalize"] = "immortalize=False"
            if hash_strings:
                start = time.perf_counter()
                strings_hashed = _immortal.hash_reachable_strings(roots)
                seconds["hash_strings"] = time.perf_counter() - start
            else:
                steps_skipped["hash_strings"] = "hash_strings=False"
        del roots

        if trim:
            from forkmem._malloc import malloc_trim

            start = time.perf_counter()
            outcome = malloc_trim()
            seconds["trim"] = time.perf_counter() - start
            trim_released = outcome.released
            if not outcome.ran:
                steps_skipped["trim"] = outcome.reason or "malloc_trim unavailable"
            del outcome  # temporaries die before the freeze, so ``frozen`` stays exact
        else:
            steps_skipped["trim"] = "trim=False"

        if fill_holes:
            start = time.perf_counter()
            holes = _holes.fill_holes()
            seconds["fill_holes"] = time.perf_counter() - start
            holes_filled = holes.blocks + holes.chunks
            holes_filled_bytes = holes.block_bytes + holes.chunk_bytes
            if holes.skipped:
                steps_skipped["fill_holes"] = "; ".join(
                    f"{allocator}: {why}" for allocator, why in holes.skipped.items()
                )
            del holes  # like the trim outcome: dead before the freeze
        else:
            steps_skipped["fill_holes"] = "fill_holes=False"

        start = time.perf_counter()
        gc.freeze()
        frozen = gc.get_freeze_count()
        seconds["freeze"] = time.perf_counter() - start
    finally:
        if was_enabled:
            gc.enable()

    report = WarmupReport(
        immortalize=immortalize,
        collected=collected,
        previously_frozen=previously_frozen,
        frozen=frozen,
        strings_hashed=strings_hashed,
        immortalized=immortalized,
        immortalized_bytes=immortalized_bytes,
        skipped=skipped,
        trim_released=trim_released,
        holes_filled=holes_filled,
        holes_filled_bytes=holes_filled_bytes,
        steps_skipped=steps_skipped,
        seconds=seconds,
    )
    _log.debug("warmup: %s", report)
    return report
