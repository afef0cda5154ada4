"""Recycle workers by the memory they own (USS), not by RSS: one policy for every integration.

RSS counts the shared heap: a worker that shares 150 MiB with its master shows 150 MiB of RSS
before it allocates anything, so an RSS limit either restarts healthy workers or sits so high
that a leak runs free. A worker's USS (its Private_Clean + Private_Dirty pages) is what it
alone holds, what a leak grows, and what restarting it gives back.

[`RecyclePolicy`][forkmem.recycle.RecyclePolicy] holds the limits. In each worker a
[`RecycleMonitor`][forkmem.recycle.RecycleMonitor] is fed every sample of the per-worker memory
sampler (at most 1% of one CPU): a *soft* limit exceeded for ``samples`` consecutive samples asks
the worker to leave after its current request or task (the integration decides how: gunicorn's
graceful exit, billiard's recycle, the pool's stop message); an optional *hard* limit ends the
worker at once (``SIGKILL``, the OOM killer's way, but before the OOM killer picks a victim). Each
decision is logged on the ``"forkmem.recycle"``
logger with its numbers, and the process that owns the workers counts them:
[`recycle_stats()`][forkmem.recycle.recycle_stats].
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

from forkmem._units import format_bytes, parse_size
from forkmem.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Callable

    from forkmem._common import MemoryUsage

__all__ = [
    "RecycleEvent",
    "RecycleMonitor",
    "RecyclePolicy",
    "RecycleStats",
    "recycle_stats",
]

_logger = logging.getLogger("forkmem.recycle")

Measure = Literal["uss", "private_dirty", "pss", "rss"]
"""What a limit is compared with: ``"uss"`` (default), ``"private_dirty"``, ``"pss"``, or
``"rss"`` (what other servers use; offered to compare, it counts the shared heap)."""

_MEASURES: tuple[str, ...] = get_args(Measure)
_KINDS = ("soft", "hard")


@dataclass(frozen=True, slots=True)
class RecyclePolicy:
    """When a worker is recycled for its memory.

    ``max_private_memory`` is the soft limit (bytes): a worker whose ``measure`` stays above it
    for ``samples`` consecutive samples leaves after its current request or task.
    ``max_private_memory_hard`` (bytes, optional, above the soft limit) ends it at the first
    sample over it. Build one from user input (sizes like ``"200 MiB"``) with
    [`build()`][forkmem.recycle.RecyclePolicy.build].
    """

    max_private_memory: int | None
    max_private_memory_hard: int | None = None
    measure: Measure = "uss"
    samples: int = 2

    def __post_init__(self) -> None:
        for name in ("max_private_memory", "max_private_memory_hard"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise InvalidArgument(f"{name} must be a positive number of bytes; got {value!r}")
        if self.max_private_memory is None and self.max_private_memory_hard is None:
            raise InvalidArgument("a RecyclePolicy needs max_private_memory or a hard limit")
        soft, hard = self.max_private_memory, self.max_private_memory_hard
        if soft is not None and hard is not None and hard <= soft:
            raise InvalidArgument(
                f"the hard limit ({format_bytes(hard)}) must be above max_private_memory "
                f"({format_bytes(soft)})"
            )
        if self.measure not in _MEASURES:
            raise InvalidArgument(
                f"measure must be one of {', '.join(_MEASURES)}; got {self.measure!r}"
            )
        samples = self.samples
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise InvalidArgument(f"samples must be a positive integer; got {samples!r}")

    @classmethod
    def build(
        cls,
        max_private_memory: str | int | None,
        max_private_memory_hard: str | int | None = None,
        *,
        measure: str = "uss",
        samples: int = 2,
        where: str = "RecyclePolicy",
    ) -> RecyclePolicy | None:
        """The policy for these options, or ``None`` when both limits are ``None`` (no recycling).

        Sizes are bytes or strings such as ``"200 MiB"``; ``where`` names the caller in errors.
        """
        if max_private_memory is None and max_private_memory_hard is None:
            return None
        try:
            soft = None if max_private_memory is None else parse_size(max_private_memory)
            hard = None if max_private_memory_hard is None else parse_size(max_private_memory_hard)
            return cls(soft, hard, measure, samples)  # type: ignore[arg-type]
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}: {exc}") from None

    def value(self, usage: MemoryUsage) -> int | None:
        """The number this policy compares, from one sample (``None`` if the kernel lacks it)."""
        value: int | None = getattr(usage, self.measure)
        return value


@dataclass(frozen=True, slots=True)
class RecycleEvent:
    """One recycle decision, with its numbers."""

    integration: str
    """``"gunicorn"``, ``"celery"`` or ``"pool"``."""
    pid: int
    """The recycled worker."""
    kind: str
    """``"soft"`` (leaves after its current request/task) or ``"hard"`` (ended at once)."""
    measure: str
    """The measure compared (``"uss"``...)."""
    value: int
    """Bytes at the sample that decided it."""
    limit: int
    """The limit it was over, in bytes."""
    samples: int
    """Consecutive samples over the limit."""
    served: int
    """Requests or tasks the worker had finished."""
    age: float
    """Seconds since the worker started."""
    when: float
    """``time.time()`` of the decision."""

    @property
    def reason(self) -> str:
        """One line: ``"uss 212.0 MiB > 200.0 MiB for 2 samples"``."""
        plural = "s" if self.samples != 1 else ""
        return (
            f"{self.measure} {format_bytes(self.value)} > {format_bytes(self.limit)} "
            f"for {self.samples} sample{plural}"
        )

    def describe(self) -> str:
        """The log line's body."""
        then = (
            "it leaves after its current request/task"
            if self.kind == "soft"
            else "it is ended now (hard limit)"
        )
        return (
            f"recycling {self.integration} worker pid {self.pid}: {self.reason} "
            f"({self.kind} limit); served {self.served}, age {self.age:.1f} s; {then}"
        )


class RecycleMonitor:
    """Decides, sample by sample, when one worker must go (runs in the worker).

    Give [`observe()`][forkmem.recycle.RecycleMonitor.observe] as the sampler's ``on_sample``.
    ``served`` counts the requests or tasks done so far; ``on_soft`` asks the worker to leave after
    its current one (called once); ``on_hard`` ends it now (default: ``SIGKILL`` to itself, after
    the log line is written).
    """

    def __init__(
        self,
        policy: RecyclePolicy,
        *,
        integration: str,
        served: Callable[[], int],
        on_soft: Callable[[RecycleEvent], None],
        on_hard: Callable[[RecycleEvent], None] | None = None,
        slot: RecycleSlot | None = None,
    ) -> None:
        self.policy = policy
        self.integration = integration
        self._served = served
        self._on_soft = on_soft
        self._on_hard = on_hard or self.end_worker
        self.slot = slot
        self.started = time.monotonic()
        self.over = 0
        self.retiring = False
        """Set once the soft limit decided: the worker must leave after its current work."""
        self.event: RecycleEvent | None = None

    def _event(self, kind: str, value: int, limit: int) -> RecycleEvent:
        return RecycleEvent(
            integration=self.integration,
            pid=os.getpid(),
            kind=kind,
            measure=self.policy.measure,
            value=value,
            limit=limit,
            samples=self.over if kind == "soft" else 1,
            served=self._served(),
            age=time.monotonic() - self.started,
            when=time.time(),
        )

    def _decide(self, event: RecycleEvent, action: Callable[[RecycleEvent], None]) -> None:
        self.event = event
        if self.slot is not None:
            self.slot.write(event)
        _logger.warning("forkmem: %s", event.describe())
        action(event)

    @staticmethod
    def end_worker(event: RecycleEvent) -> None:
        """The hard limit's default action: ``SIGKILL`` this process (no cleanup can hang)."""
        for handler in _logger.handlers + logging.getLogger("forkmem").handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def observe(self, usage: MemoryUsage) -> bool:
        """Feed one sample; acts when a limit decides.

        Returns ``True`` while the soft limit is crossed but not yet held for ``samples``
        samples, so the sampler confirms it at once rather than after its usual pause.
        """
        value = self.policy.value(usage)
        if value is None:
            return False
        hard = self.policy.max_private_memory_hard
        if hard is not None and value > hard:
            self._decide(self._event("hard", value, hard), self._on_hard)
            return False
        soft = self.policy.max_private_memory
        if soft is None or self.retiring:
            return False
        self.over = self.over + 1 if value > soft else 0
        if self.over >= self.policy.samples:
            self.retiring = True
            self._decide(self._event("soft", value, soft), self._on_soft)
            return False
        return self.over > 0


# pid, kind, measure, value, limit, samples, served, age, when
_SLOT = struct.Struct("<qbbqqqqdd")


class RecycleSlot:
    """A few bytes shared between a parent and the worker it is about to fork.

    Create it in the parent *before* the fork; the worker's monitor writes its decision into it;
    the parent `read()` s it after the worker is gone, even after a ``SIGKILL``.
    """

    __slots__ = ("_map",)

    def __init__(self) -> None:
        self._map: mmap.mmap | None = mmap.mmap(-1, _SLOT.size)

    def claim(self, pid: int) -> None:
        """Mark the slot as ``pid``'s before any decision (the parent can tell it is alive)."""
        if self._map is not None:
            _SLOT.pack_into(self._map, 0, pid, 0, 0, 0, 0, 0, 0, 0.0, 0.0)

    def owner(self) -> int | None:
        """The worker that claimed the slot or wrote a decision, if any."""
        if self._map is None:
            return None
        pid: int = _SLOT.unpack_from(self._map, 0)[0]
        return pid if pid > 0 else None

    def write(self, event: RecycleEvent) -> None:
        if self._map is None:
            return
        _SLOT.pack_into(
            self._map,
            0,
            event.pid,
            _KINDS.index(event.kind) + 1,
            _MEASURES.index(event.measure),
            event.value,
            event.limit,
            event.samples,
            event.served,
            event.age,
            event.when,
        )

    def read(self, integration: str) -> RecycleEvent | None:
        """The decision the worker wrote, or ``None``."""
        if self._map is None:
            return None
        pid, kind, measure, value, limit, samples, served, age, when = _SLOT.unpack_from(
            self._map, 0
        )
        if not 1 <= kind <= len(_KINDS) or not 0 <= measure < len(_MEASURES):
            return None
        return RecycleEvent(
            integration, pid, _KINDS[kind - 1], _MEASURES[measure], value, limit, samples,
            served, age, when,
        )  # fmt: skip

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


@dataclass(frozen=True, slots=True)
class RecycleStats:
    """Workers recycled for their memory, counted in the process that owns them."""

    total: int = 0
    soft: int = 0
    hard: int = 0
    by_integration: dict[str, int] = field(default_factory=dict)
    last: RecycleEvent | None = None


_lock = threading.Lock()
_counts = {"soft": 0, "hard": 0}
_by_integration: dict[str, int] = {}
_last: list[RecycleEvent] = []
_collectors: list[Callable[[], None]] = []


def _reset_in_child() -> None:
    global _lock
    # A fork in another thread may have happened while the lock was held; counts belong to
    # the parent's workers, not to this process.
    _lock = threading.Lock()
    _counts.update(soft=0, hard=0)
    _by_integration.clear()
    _last.clear()
    del _collectors[:]


os.register_at_fork(after_in_child=_reset_in_child)


def record_recycle(event: RecycleEvent) -> None:
    """Count ``event`` in this process (the integrations call it where the worker is reaped)."""
    with _lock:
        _counts[event.kind] = _counts.get(event.kind, 0) + 1
        _by_integration[event.integration] = _by_integration.get(event.integration, 0) + 1
        _last[:] = [event]


def counted(integration: str) -> int:
    """How many workers of ``integration`` this process counted so far (runs no collector)."""
    with _lock:
        return _by_integration.get(integration, 0)


def register_collector(collect: Callable[[], None]) -> None:
    """Run ``collect`` before each `recycle_stats()` (an integration that counts lazily)."""
    with _lock:
        if collect not in _collectors:
            _collectors.append(collect)


def recycle_stats() -> RecycleStats:
    """How many workers this process's integrations recycled for memory, and the last one.

    Call it in the process that owns the workers: the gunicorn master, the Celery main process,
    the parent of a [`fork_pool()`][forkmem.pool.fork_pool]. Counts only grow (counter semantics).
    """
    with _lock:
        collectors = list(_collectors)
    for collect in collectors:
        try:
            collect()
        except Exception:  # a metrics read must never raise
            _logger.debug("forkmem: a recycle collector failed", exc_info=True)
    with _lock:
        soft, hard = _counts["soft"], _counts["hard"]
        return RecycleStats(
            total=soft + hard,
            soft=soft,
            hard=hard,
            by_integration=dict(_by_integration),
            last=_last[0] if _last else None,
        )
