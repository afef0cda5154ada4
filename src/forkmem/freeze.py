"""``gc.freeze()`` done right: once before the fork loop, or young-collect-then-freeze per fork.

Why freeze at all: a full collection in a forked child writes into the GC header of every
tracked object it visits, which copies every page holding one. ``gc.freeze()`` moves all tracked
objects into a permanent generation the collector never visits, so those pages stay shared.

Why not ``before=gc.freeze, after_in_parent=gc.unfreeze``: ``gc.freeze()`` resets the
collector's counters and ``gc.unfreeze()`` puts every frozen object into the *oldest*
generation, so the young garbage of each iteration skips the young collections and piles up
waiting for a full collection that the reset counters never trigger (Airflow PR #60505).
[`freeze_around_fork()`][forkmem.freeze_around_fork] leaves the parent's collector alone and freezes
in the child instead.
"""

from __future__ import annotations

import functools
import gc
import inspect
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, ParamSpec, TypeVar

from forkmem._validate import check_bool, check_warmup_for_immortalize
from forkmem.errors import ForkmemWarning, InvalidArgument
from forkmem.gcinfo import CollectorKind, collector_kind
from forkmem.hooks import ForkHook, at_fork

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import TracebackType

    from forkmem.warm import WarmupReport

__all__ = [
    "FreezeAroundFork",
    "FreezeReport",
    "block",
    "freeze_around_fork",
    "freeze_heap",
    "frozen",
    "gc_paused",
    "prepare",
]

P = ParamSpec("P")
R = TypeVar("R")

Strategy = Literal["young", "full", "naive"]
_STRATEGIES: tuple[str, ...] = ("young", "full", "naive")

# The highest generation the "young" strategy collects before each fork: gc.collect(1) empties
# generations 0 and 1, so the child inherits (and freezes) no young garbage. Collecting
# generation 0 alone is not enough: what an automatic collection promoted to generation 1
# mid-iteration and then died would be inherited and frozen in every child; in the parent-side
# freeze/unfreeze variant it even leaks (benchmarks/fork_loop.py, mode "young0"). On the
# incremental collector collect(1) is "young + one increment"; on the free-threaded one every
# collection is full.
_YOUNG_GENERATION = 1

# Tokens of the frozen() blocks currently open, innermost last (list append/remove are atomic
# under the GIL, so no lock is needed, and none can be left held across a fork).
_active: list[object] = []
# True when a frozen() block ended without unfreezing: the parent heap is meant to stay frozen,
# so per-fork unfreezing (freeze_around_fork's "naive" strategy) must leave it alone.
_pinned = False


@dataclass(frozen=True, slots=True)
class FreezeReport:
    """What entering a [`frozen()`][forkmem.frozen] block did."""

    objects_frozen: int
    """Objects this block moved into the permanent generation."""
    frozen_total: int
    """Objects in the permanent generation after the freeze (``gc.get_freeze_count()``)."""
    collected: int | None
    """Unreachable objects found by the collection before the freeze; ``None`` when no
    collection ran here (``collect=False``, or ``warmup=True`` which collects by itself)."""
    seconds: float
    """Wall time of the collection, the freeze (and the warmup when asked), in seconds."""
    collector: CollectorKind
    """The collector design (see [`forkmem.gc_info()`][forkmem.gc_info])."""
    depth: int
    """Nesting level: 1 for the outermost [`frozen()`][forkmem.frozen] block."""
    warmup: WarmupReport | None = None
    """The ``forkmem.WarmupReport`` when ``warmup=True``, else ``None``."""


class frozen:
    """Context manager and decorator: collect, then ``gc.freeze()``, for a block or a function.

    The canonical use is ``with forkmem.frozen(): run_fork_loop()``: everything the parent built
    before the loop is moved out of the collector's reach, so children running ``gc.collect()``
    do not copy the pages that hold it.

    ``collect`` runs a full ``gc.collect()`` first, so garbage is not frozen forever.
    ``unfreeze`` calls ``gc.unfreeze()`` when the outermost block ends (it is all-or-nothing:
    objects frozen elsewhere are released too); by default the objects stay frozen, which is what
    a parent that keeps forking wants. ``warmup`` and ``immortalize`` are deprecated: call
    ``forkmem.warmup(immortalize=...)`` before the block (it collects and freezes by itself, and
    more) and open the block with ``collect=False``. To freeze once for good, without a block,
    call ``forkmem.freeze_heap()``.

    Re-entrant: an inner block freezes again (catching objects made since) but never unfreezes;
    only the outermost block's ``unfreeze`` counts. As a decorator it wraps ordinary functions
    only and opens a fresh block per call: decorating a generator function, an ``async def`` or
    an async generator raises [`InvalidArgument`][forkmem.InvalidArgument] (calling one returns
    before its body runs, so the block would freeze nothing of it).
    """

    __slots__ = ("_tokens", "collect", "immortalize", "unfreeze", "warmup")

    def __init__(
        self,
        *,
        collect: bool = True,
        unfreeze: bool = False,
        warmup: bool = False,
        immortalize: bool = False,
    ) -> None:
        if warmup is True or immortalize is True:
            warnings.warn(
                "frozen(warmup=..., immortalize=...) is deprecated: call forkmem.warmup("
                "immortalize=...) first, then open frozen(collect=False)",
                DeprecationWarning,
                stacklevel=2,
            )
        self._setup(collect, unfreeze, warmup, immortalize)

    def _setup(self, collect: bool, unfreeze: bool, warmup: bool, immortalize: bool) -> None:
        for name, value in (
            ("collect", collect),
            ("unfreeze", unfreeze),
            ("warmup", warmup),
            ("immortalize", immortalize),
        ):
            check_bool(f"frozen({name}=...)", value)
        check_warmup_for_immortalize("frozen", warmup=warmup, immortalize=immortalize)
        self.collect = collect
        self.unfreeze = unfreeze
        self.warmup = warmup
        self.immortalize = immortalize
        self._tokens: list[object] = []

    def __repr__(self) -> str:
        return (
            f"frozen(collect={self.collect}, unfreeze={self.unfreeze}, "
            f"warmup={self.warmup}, immortalize={self.immortalize})"
        )

    def __enter__(self) -> FreezeReport:
        kind = collector_kind()
        before = gc.get_freeze_count()
        started = time.perf_counter()
        collected: int | None = None
        warmup_report: WarmupReport | None = None
        if self.warmup:
            warmup_report = _run_warmup(self.immortalize)
        else:
            if self.collect:
                collected = gc.collect()
            gc.freeze()
        seconds = time.perf_counter() - started
        token = object()
        _active.append(token)
        self._tokens.append(token)
        total = gc.get_freeze_count()
        return FreezeReport(
            objects_frozen=max(0, total - before),
            frozen_total=total,
            collected=collected,
            seconds=seconds,
            collector=kind,
            depth=len(_active),
            warmup=warmup_report,
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        global _pinned
        token = self._tokens.pop()
        _active.remove(token)
        if _active:
            return  # an outer block is still open: never unfreeze under it
        if self.unfreeze:
            gc.unfreeze()
            _pinned = False
        else:
            _pinned = True

    def __call__(self, func: Callable[P, R]) -> Callable[P, R]:
        if not callable(func):
            raise InvalidArgument(f"frozen() decorates functions; got {func!r}")
        if (
            inspect.iscoroutinefunction(func)
            or inspect.isasyncgenfunction(func)
            or inspect.isgeneratorfunction(func)
        ):
            # Calling one only creates the generator or coroutine: the block would close before
            # the body ever ran, a silent no-op.
            raise InvalidArgument(
                f"frozen() decorates ordinary functions only, not {func!r}: its body runs after "
                "the call returns; open `with forkmem.frozen():` inside it instead"
            )
        options = {
            "collect": self.collect,
            "unfreeze": self.unfreeze,
            "warmup": self.warmup,
            "immortalize": self.immortalize,
        }

        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with block(**options):
                return func(*args, **kwargs)

        return wrapper


def block(
    *,
    collect: bool = True,
    unfreeze: bool = False,
    warmup: bool = False,
    immortalize: bool = False,
) -> frozen:
    """A `frozen` block that may warm up (the integrations' options map onto it)."""
    made = frozen.__new__(frozen)
    made._setup(collect, unfreeze, warmup, immortalize)
    return made


def prepare(
    *, collect: bool = True, warmup: bool = False, immortalize: bool = False
) -> FreezeReport:
    """Collect and freeze (or warm up) now, for good; the integrations' one call before forking."""
    with block(collect=collect, warmup=warmup, immortalize=immortalize) as report:
        return report


def freeze_heap(*, collect: bool = True) -> FreezeReport:
    """Collect, then ``gc.freeze()``, now and for good; return what it did.

    The verb for a parent that loaded what its workers share and is about to fork them (a
    server's "ready" hook, the end of an application factory). ``collect=False`` skips the
    full collection. To warm the heap up as well (str hashes, ``malloc_trim``, immortal objects),
    call [`forkmem.warmup()`][forkmem.warm.warmup] instead: it freezes too. For a freeze that ends
    with a block (optionally unfreezing), use [`frozen`][forkmem.frozen].
    """
    return prepare(collect=collect)


def _run_warmup(immortalize: bool) -> WarmupReport:
    # Imported here: warmup's heap walk is only loaded when someone asks for it.
    from forkmem.warm import warmup

    return warmup(immortalize=immortalize)


@contextmanager
def gc_paused() -> Iterator[None]:
    """Disable the cyclic collector for a block (or a decorated function), then restore it.

    Useful around start-up imports in a parent that will fork: no collection runs while the
    long-lived objects are being created, so none is wasted on them before the freeze. The
    previous state comes back even when the block raises; nested use is safe (only the block
    that disabled the collector enables it again).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class FreezeAroundFork:
    """Handle returned by `freeze_around_fork()`; `remove()` turns it off."""

    __slots__ = (
        "_full_runs",
        "_hook",
        "_long_lived_pending",
        "_long_lived_total",
        "_pending_unfreeze",
        "_young_runs",
        "forks",
        "full_collections",
        "strategy",
    )

    def __init__(self, strategy: Strategy) -> None:
        self.strategy: Strategy = strategy
        self.forks = 0
        """How many forks this handle prepared in this process."""
        self.full_collections = 0
        """Full collections the "young" strategy ran itself, standing in for the automatic ones
        its per-fork young collections pre-empt."""
        self._pending_unfreeze = 0
        self._young_runs = 0
        self._long_lived_pending = 0
        self._long_lived_total = 0
        self._full_runs = 0
        if strategy == "young" and collector_kind() == "generational":
            self._long_lived_total = -1  # counted when first needed: counting walks the heap
            self._full_runs = gc.get_stats()[2]["collections"]
        self._hook: ForkHook
        if strategy == "naive":
            self._hook = at_fork(
                before=self._naive_before,
                after_in_parent=self._naive_after_in_parent,
                after_in_child=self._naive_after_in_child,
                name="forkmem.freeze_around_fork[naive]",
            )
        else:
            self._hook = at_fork(
                before=self._before,
                after_in_child=gc.freeze,
                name=f"forkmem.freeze_around_fork[{strategy}]",
            )

    @property
    def active(self) -> bool:
        """Whether the hooks are still registered."""
        return self._hook.active

    def remove(self) -> None:
        """Stop preparing forks (idempotent)."""
        self._hook.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"<FreezeAroundFork strategy={self.strategy!r} {state}>"

    def _before(self) -> None:
        self.forks += 1
        if not gc.isenabled():
            return  # the user turned the collector off: no collections on our account either
        if self.strategy == "full":
            gc.collect()
        elif collector_kind() != "generational":
            gc.collect(_YOUNG_GENERATION)
        else:
            self._collect_young()

    def _collect_young(self) -> None:
        # An explicit young collection at every fork resets the counters that trigger the
        # automatic collections, so in a fast fork loop the automatic full collection never
        # comes and garbage that reached the oldest generation piles up. Replay CPython's own
        # rule instead: a full collection once more than threshold2 young collections ran and
        # the objects promoted since the last one exceed a quarter of the old generation.
        full_runs = gc.get_stats()[2]["collections"]
        if full_runs != self._full_runs:  # an automatic or explicit full collection ran
            self._full_runs = full_runs
            self._young_runs = self._long_lived_pending = 0
            self._long_lived_total = -1
        young = len(gc.get_objects(0)) + len(gc.get_objects(1))
        found = gc.collect(_YOUNG_GENERATION)
        self._young_runs += 1
        self._long_lived_pending += max(0, young - found)
        if self._young_runs <= gc.get_threshold()[2]:
            return
        if self._long_lived_total < 0:
            # Counting the old generation walks the whole heap, so it waits until the rule can
            # fire (a handle used for a single fork never pays it); what was promoted since the
            # last full collection is not part of the long-lived total.
            old = len(gc.get_objects(2))
            self._long_lived_total = max(0, old - self._long_lived_pending)
        if self._long_lived_pending > self._long_lived_total // 4:
            gc.collect()
            self.full_collections += 1
            self._full_runs = gc.get_stats()[2]["collections"]
            self._young_runs = self._long_lived_pending = 0
            self._long_lived_total = -1

    def _naive_before(self) -> None:
        self.forks += 1
        if _active or _pinned:
            # A frozen() block owns the permanent generation; unfreezing after the fork would
            # undo it.
            return
        gc.freeze()
        self._pending_unfreeze += 1

    def _naive_after_in_parent(self) -> None:
        if self._pending_unfreeze:
            self._pending_unfreeze -= 1
            gc.unfreeze()

    def _naive_after_in_child(self) -> None:
        self._pending_unfreeze = 0


def freeze_around_fork(strategy: Strategy = "young") -> FreezeAroundFork:
    """Collect before every fork and freeze the child's inherited heap; returns a handle.

    For parents that cannot freeze once before their fork loop (their heap keeps changing).
    In every child, right after the fork, everything inherited is frozen (``gc.freeze()`` as
    the first after-fork hook work), so the child's collections never touch the parent's pages.
    The parent is never frozen, so its collector's generations and counters stay intact.
    Strategies, for what runs in the parent before each fork:

    - ``"young"`` (default): ``gc.collect(1)``, the young generations, so the child does not
      inherit (and freeze) young garbage. Explicit young collections pre-empt the automatic
      ones, so on the generational collector the handle also runs the full collection CPython
      would have run, by CPython's own rule (see
      [`FreezeAroundFork.full_collections`][forkmem.FreezeAroundFork.full_collections]). Costs about
      a plain fork and the parent does not grow (see the fork-loop benchmark).
    - ``"full"``: a full ``gc.collect()``: no garbage at all reaches the child, at the cost of a
      full collection per fork.
    - ``"naive"``: ``gc.freeze()`` in the parent before the fork and ``gc.unfreeze()`` after it:
      the pattern that leaks, kept to compare. It steps aside while a [`frozen()`][forkmem.frozen]
      block owns the permanent generation.

    Built on [`forkmem.at_fork()`][forkmem.at_fork], so ``run_fork_hooks("after_in_child")`` freezes
    children of servers that fork in C. The collections are skipped while the collector is disabled.
    On collectors where freezing walks the heap (incremental, free-threaded) every child pays for
    that walk: a [`ForkmemWarning`][forkmem.ForkmemWarning] says so, and
    [`frozen()`][forkmem.frozen] once is better.
    """
    if strategy not in _STRATEGIES:
        raise InvalidArgument(
            f"freeze_around_fork(strategy=...) must be one of {', '.join(_STRATEGIES)}; "
            f"got {strategy!r}"
        )
    kind = collector_kind()
    if kind != "generational":
        warnings.warn(
            f"on the {kind} garbage collector gc.freeze() walks the whole heap, so "
            "freeze_around_fork() costs O(heap) per fork; prefer one forkmem.frozen() "
            "before the fork loop",
            ForkmemWarning,
            stacklevel=2,
        )
    return FreezeAroundFork(strategy)
