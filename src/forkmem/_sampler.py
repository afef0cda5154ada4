"""Per-worker memory sampler shared by the integrations: peak USS and private dirty, cheaply.

A worker's copy-on-write damage is its private memory (USS = Private_Clean + Private_Dirty from
``/proc/PID/smaps_rollup``). Reading it costs time proportional to the worker's resident size, so
the sampler bounds its duty cycle the way Redis samples its fork child: it times each
[`forkmem.memory()`][forkmem.usage.memory] call and sleeps ``cost * (1/duty_cycle - 1)`` before the
next one, so at most ``duty_cycle`` (1% by default) of one CPU goes to sampling, whatever the
worker's size (``cost`` is the latest sample's, so the pause follows the worker's size as it
changes). The clock can run in a daemon thread (`Sampler.start()`) or in the caller's own loop
(``start(thread=False)``, then `Sampler.poll()` after each unit of work: one monotonic clock read,
and a sample only once the pause is over), which spares a worker the thread's stack, its malloc
arena and the threading code it runs.

The peak can be published through a `PeakSlot`, a small anonymous shared mapping created
by the parent before the fork: the parent then reads the worker's peak after the worker is gone,
even when it was killed (``SIGKILL`` by the OOM killer or a timeout) and could log nothing itself.
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forkmem._units import format_bytes
from forkmem._validate import check_duty_cycle
from forkmem.errors import ForkmemError, InvalidArgument

# Imported here, not at the first sample: the parent loads it once before it forks, and no
# worker pays ~25 ms of imports (and their private pages) for its first sample.
from forkmem.usage import memory

if TYPE_CHECKING:
    from collections.abc import Callable

    from forkmem._common import MemoryUsage

__all__ = ["PeakMemory", "PeakSlot", "Sampler", "log_peak"]

_logger = logging.getLogger("forkmem.sampler")

# pid, peak_uss, peak_private_dirty, last_uss, samples, cost_total, elapsed
_LAYOUT = struct.Struct("<qqqqqdd")


@dataclass(frozen=True, slots=True)
class PeakMemory:
    """The highest private memory one worker reached while it was sampled (bytes)."""

    pid: int
    """The sampled process."""
    peak_uss: int
    """Highest USS seen (Private_Clean + Private_Dirty): memory only this worker holds."""
    peak_private_dirty: int
    """Highest Private_Dirty seen: pages this worker wrote, copied ones included."""
    last_uss: int
    """USS at the last sample."""
    samples: int
    """How many samples were taken."""
    sample_seconds: float
    """Mean cost of one sample, in seconds."""
    elapsed: float
    """Seconds between the first and the last sample."""


class PeakSlot:
    """A few bytes of memory shared between a parent and the worker it is about to fork.

    Create it in the parent *before* the fork; the worker's `Sampler` writes its peak
    into it after every sample; the parent calls `read()` once the worker has exited.
    """

    __slots__ = ("_map",)

    def __init__(self) -> None:
        # An anonymous mapping is MAP_SHARED: parent and child see the same page after fork.
        self._map: mmap.mmap | None = mmap.mmap(-1, _LAYOUT.size)

    def write(self, peak: PeakMemory) -> None:
        """Publish ``peak`` (called in the worker)."""
        if self._map is None:
            return
        cost_total = peak.sample_seconds * peak.samples
        _LAYOUT.pack_into(
            self._map,
            0,
            peak.pid,
            peak.peak_uss,
            peak.peak_private_dirty,
            peak.last_uss,
            peak.samples,
            cost_total,
            peak.elapsed,
        )

    def read(self) -> PeakMemory | None:
        """The last peak the worker published, or ``None`` if it never sampled."""
        if self._map is None:
            return None
        pid, uss, dirty, last, samples, cost_total, elapsed = _LAYOUT.unpack_from(self._map, 0)
        if samples <= 0:
            return None
        return PeakMemory(
            pid=pid,
            peak_uss=uss,
            peak_private_dirty=dirty,
            last_uss=last,
            samples=samples,
            sample_seconds=cost_total / samples,
            elapsed=elapsed,
        )

    def close(self) -> None:
        """Unmap the slot in this process (idempotent)."""
        if self._map is not None:
            self._map.close()
            self._map = None


class Sampler:
    """Samples one process's private memory at a bounded duty cycle, in a thread or when polled.

    ``pid=None`` samples the calling process (read at `start()`, so a sampler created before
    a fork and started in the child samples the child). ``duty_cycle`` is the largest share of
    one CPU spent sampling (``0 < duty_cycle <= 1``); ``min_interval`` is the shortest pause
    between samples, in seconds, so small workers are not sampled needlessly often.
    ``on_sample`` is called with every sample's [`MemoryUsage`][forkmem.MemoryUsage], in the
    sampling thread (a recycle policy acts on it); an exception from it is logged, never raised.
    When it returns ``True`` (a limit is crossed but not yet confirmed) the next sample comes
    after ``min_interval``: a growing worker's samples cost more and so come further apart, and
    confirming late lets a leak run on for seconds.

    ``start()`` samples in a daemon thread; ``start(thread=False)`` takes the first sample at once
    and leaves the rest to `poll()`, which the caller runs after each request or task (from any
    of its threads): samples then come on the same clock, but only when the caller polls.
    """

    def __init__(
        self,
        pid: int | None = None,
        *,
        duty_cycle: float = 0.01,
        min_interval: float = 0.1,
        slot: PeakSlot | None = None,
        on_sample: Callable[[MemoryUsage], bool | None] | None = None,
    ) -> None:
        if isinstance(pid, bool) or (pid is not None and (not isinstance(pid, int) or pid <= 0)):
            raise InvalidArgument(f"pid must be a positive integer or None; got {pid!r}")
        check_duty_cycle("duty_cycle", duty_cycle)
        if not isinstance(min_interval, (int, float)) or not min_interval >= 0:
            raise InvalidArgument(f"min_interval must be >= 0 seconds; got {min_interval!r}")
        self._pid_arg = pid
        self.pid = pid if pid is not None else os.getpid()
        self.duty_cycle = float(duty_cycle)
        self.min_interval = float(min_interval)
        self.slot = slot
        self.on_sample = on_sample
        self._peak_uss = 0
        self._peak_dirty = 0
        self._last_uss = 0
        self._samples = 0
        self._cost = 0.0
        self.last_sample_seconds = 0.0
        """How long the latest sample took (the next pause is based on it)."""
        self._first = 0.0
        self._last = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dead = False
        self._hurry = False
        self._due = 0.0  # monotonic time of the next poll()'s sample
        # One sample at a time: poll() from a gthread worker's request threads, stop()'s last.
        self._sampling = threading.Lock()

    def sample(self) -> bool:
        """Take one sample now; ``False`` once the process is gone or cannot be read."""
        if self._dead:
            return False
        started = time.perf_counter()
        try:
            usage = memory(self.pid)
        except (ForkmemError, OSError) as exc:
            # The process exited (or its files became unreadable): keep what was seen.
            _logger.debug("sampler: stops sampling pid %d: %s", self.pid, exc)
            self._dead = True
            return False
        cost = time.perf_counter() - started
        now = time.monotonic()
        uss = usage.uss or 0
        first = now if self._samples == 0 else self._first
        samples = self._samples + 1
        peak = PeakMemory(
            pid=self.pid,
            peak_uss=max(self._peak_uss, uss),
            peak_private_dirty=max(self._peak_dirty, usage.private_dirty or 0),
            last_uss=uss,
            samples=samples,
            sample_seconds=(self._cost + cost) / samples,
            elapsed=now - first,
        )
        # The slot first: a worker whose other thread sees this sample through peak() and is
        # killed at once (SIGKILL, the OOM killer) must still leave it in the slot.
        if self.slot is not None:
            self.slot.write(peak)
        self._first, self._last = first, now
        self._samples = samples
        self._cost += cost
        self.last_sample_seconds = cost
        self._last_uss = uss
        self._peak_uss = peak.peak_uss
        self._peak_dirty = peak.peak_private_dirty
        if self.on_sample is not None:
            try:
                self._hurry = self.on_sample(usage) is True
            except Exception:
                self._hurry = False
                _logger.exception("sampler: the on_sample callback raised")
        self._due = time.monotonic() + self.next_interval()
        return True

    def poll(self) -> bool:
        """Take a sample if the pause since the last one is over; whether it sampled.

        For a caller that drives the clock itself (``start(thread=False)``): one monotonic clock
        read when the pause is not over. Thread-safe: a poll while another thread samples
        returns ``False`` at once, and so does every poll while the sampling thread runs.
        """
        if self._dead or self._thread is not None or time.monotonic() < self._due:
            return False
        if not self._sampling.acquire(blocking=False):
            return False
        try:
            if time.monotonic() < self._due:  # another thread sampled since the check
                return False
            return self.sample()
        finally:
            self._sampling.release()

    def next_interval(self) -> float:
        """Seconds to sleep after a sample so that sampling stays within ``duty_cycle``."""
        if self._samples == 0 or self._hurry:
            return self.min_interval
        # The latest cost, not the mean: the first read also pays for lazy imports, and the cost
        # follows the worker's resident size as it grows or shrinks.
        cost = self.last_sample_seconds
        return max(self.min_interval, cost * (1.0 / self.duty_cycle - 1.0))

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            if not self.sample():
                return
            stop.wait(self.next_interval())

    def start(self, *, thread: bool = True) -> Sampler:
        """Start sampling; returns ``self``. Idempotent.

        ``thread=True`` starts the sampling thread (daemon). ``thread=False`` takes one sample
        now and starts no thread: `poll()` takes the next ones.
        """
        if self._thread is not None and self._thread.is_alive():
            return self
        if self._pid_arg is None and self.pid != os.getpid():
            # Started again in a forked child: what was sampled so far was the parent.
            self.pid = os.getpid()
            self._peak_uss = self._peak_dirty = self._last_uss = self._samples = 0
            self._cost = self.last_sample_seconds = 0.0
            self._dead = False
            self._hurry = False
            self._due = 0.0
            self._sampling = threading.Lock()  # the parent's may have been held at the fork
        if not thread:
            self._thread = None
            self.poll()
            return self
        # A fresh event for each thread: one inherited through a fork may be locked for good
        # (its thread was inside wait() at the fork), and a thread that outlived stop()'s join
        # must not be revived by clearing the event it is waiting on.
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(self._stop,), name="forkmem-sampler", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, *, final_sample: bool = True, timeout: float = 5.0) -> PeakMemory | None:
        """Stop the thread (if any), take one last sample (by default) and return the peak."""
        thread, self._thread = self._thread, None
        # Only a live thread needs the event: in a forked child the parent's thread is gone,
        # and its event may have been locked at the fork.
        if thread is not None and thread.is_alive():
            self._stop.set()
            if thread is not threading.current_thread():
                thread.join(timeout)
                if thread.is_alive():
                    final_sample = False  # a sample is still running: do not race it
        # After a poll() still running in another thread (gthread), not beside it.
        if final_sample and self._sampling.acquire(timeout=min(timeout, 1.0)):
            try:
                self.sample()
            finally:
                self._sampling.release()
        return self.peak()

    def peak(self) -> PeakMemory | None:
        """The peak so far, or ``None`` before the first sample."""
        if self._samples == 0:
            return None
        return PeakMemory(
            pid=self.pid,
            peak_uss=self._peak_uss,
            peak_private_dirty=self._peak_dirty,
            last_uss=self._last_uss,
            samples=self._samples,
            sample_seconds=self._cost / self._samples,
            elapsed=self._last - self._first,
        )

    def stop_and_log(self, label: str = "worker") -> PeakMemory | None:
        """`stop()`, then log the peak on the ``"forkmem"`` logger."""
        peak = self.stop()
        log_peak(peak, label=label, pid=self.pid)
        return peak


def log_peak(
    peak: PeakMemory | None,
    *,
    label: str = "worker",
    pid: int | None = None,
    level: int = logging.INFO,
    logger: logging.Logger | None = None,
) -> None:
    """Log one worker's peak private memory (or that it was never sampled)."""
    log = logger or _logger
    if peak is None:
        log.log(level, "forkmem: %s pid %s exited before its memory was sampled", label, pid)
        return
    log.log(
        level,
        "forkmem: %s pid %d peak private memory %s (USS), private dirty %s; "
        "%d samples over %.1f s, %.2f ms each",
        label,
        peak.pid,
        format_bytes(peak.peak_uss),
        format_bytes(peak.peak_private_dirty),
        peak.samples,
        peak.elapsed,
        peak.sample_seconds * 1000,
    )
