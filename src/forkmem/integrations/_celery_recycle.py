"""Celery's side of memory recycling (private; the signal handlers in `.celery` call it).

billiard already retires a prefork child after a task when its memory is over
``worker_max_memory_per_child``: after sending the task's result, the child's loop calls
``billiard.pool.mem_rss()`` and, over the limit, makes sure the parent consumed the result and
exits with ``EX_RECYCLE``; the parent forks a replacement. That is the exit forkmem uses, with
forkmem's measure instead of ``ru_maxrss``:

- main process, ``celeryd_after_setup``: a worker without ``worker_max_memory_per_child`` gets
  one too large to ever trigger by itself, so that billiard makes the check after every task;
- main process, before each fork (a forkmem fork hook): a
  `forkmem.recycle.RecycleSlot` for the child;
- child: the sampler feeds a `forkmem.recycle.RecycleMonitor`; once it has decided,
  the child's ``mem_rss()`` reports the limit plus one, and billiard retires the child after
  the task it is running. Until then it reports billiard's own figure;
- main process, when the next child is created and in `forkmem.recycle_stats`: the slots
  say which children memory ended.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from forkmem.hooks import at_fork
from forkmem.recycle import (
    RecycleMonitor,
    RecyclePolicy,
    RecycleSlot,
    counted,
    record_recycle,
    register_collector,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from forkmem._common import MemoryUsage

__all__ = ["arm", "collect", "prepare_worker", "watch"]

INTEGRATION = "celery"
_logger = logging.getLogger("forkmem.celery")

# KiB, as billiard counts: far above any machine, so billiard's own RSS check never fires.
_NEVER_KIB = 2**40
_limit_kib = _NEVER_KIB
_lock = threading.Lock()
_slots: list[tuple[RecycleSlot, float]] = []  # main process: one per fork, with its time
# A fork whose child never claimed its slot (not a pool child) is forgotten after this long.
_UNCLAIMED_SECONDS = 60.0
_armed: RecycleSlot | None = None  # the slot of the child about to fork (inherited by it)


def prepare_worker(worker: Any) -> None:
    """Main process, at ``celeryd_after_setup``: make billiard check memory after every task.

    The signal comes after the worker built its pool object and before that pool forks, so the
    option goes where the pool reads it when it starts (its ``options``).
    """
    global _limit_kib
    pool = getattr(worker, "pool", None)
    options = getattr(pool, "options", None)
    if not isinstance(options, dict):
        _logger.warning(
            "forkmem: this Celery pool (%s) has no prefork options; max_private_memory needs "
            "the prefork pool and is off",
            type(pool).__name__,
        )
        return
    limit = options.get("max_memory_per_child") or getattr(worker, "max_memory_per_child", None)
    if not limit:
        limit = _NEVER_KIB
    options["max_memory_per_child"] = limit
    _limit_kib = int(limit)
    register_collector(collect)
    at_fork(before=arm, name="forkmem.celery.recycle")


def arm() -> None:
    """Main process, just before each fork (a fork hook): the slot the child's decision uses.

    billiard's blocking pool (transports without an event loop) sends no signal before it
    forks a child, so this runs as a forkmem "before" fork hook, for every pool.
    """
    global _armed
    collect()  # a child is being replaced: say (and count) why the last one left
    slot = RecycleSlot()
    now = time.monotonic()
    with _lock:
        _slots.append((slot, now))
    _armed = slot


def watch(policy: RecyclePolicy) -> Callable[[MemoryUsage], bool]:
    """Child, at ``worker_process_init``: the monitor for the sampler, and billiard's check."""
    import billiard.pool

    measured: Callable[[], int] = billiard.pool.mem_rss
    done = [0]
    monitor = RecycleMonitor(
        policy,
        integration=INTEGRATION,
        served=lambda: done[0],
        on_soft=lambda event: None,  # billiard's check after the current task does the rest
        slot=_armed,
    )
    if _armed is not None:
        _armed.claim(os.getpid())

    def mem_rss() -> int:
        # Called by billiard's child loop once after every task, result already sent.
        done[0] += 1
        if monitor.retiring:
            return _limit_kib + 1
        # Without a limit of the user's, billiard's RSS figure is not needed (and must be > 0).
        return measured() if _limit_kib != _NEVER_KIB else 1

    billiard.pool.mem_rss = mem_rss
    return monitor.observe


def collect() -> None:
    """Main process: count (and log) children that memory ended; forget the finished ones."""
    with _lock:
        slots = list(_slots)
    now = time.monotonic()
    for entry in slots:
        slot, made = entry
        event = slot.read(INTEGRATION)
        owner = slot.owner()
        if event is None:
            if owner is None and now - made < _UNCLAIMED_SECONDS:
                continue  # forked, not yet initialized
            if owner is not None and _alive(owner):
                continue  # running
        with _lock, contextlib.suppress(ValueError):
            _slots.remove(entry)
        slot.close()
        if event is None:
            continue  # exited otherwise, or a fork that was not a pool child
        record_recycle(event)
        _logger.info(
            "forkmem: celery child pid %d was recycled for memory (%s, %s limit); "
            "%d recycled so far",
            event.pid,
            event.reason,
            event.kind,
            counted(INTEGRATION),
        )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
