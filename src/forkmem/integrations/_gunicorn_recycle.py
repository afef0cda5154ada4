"""gunicorn's side of memory recycling (private; the hooks in `.gunicorn` call it).

Master, before the fork: a `RecycleSlot` for the worker. Worker: a
[`RecycleMonitor`][forkmem.recycle.RecycleMonitor] fed by the worker's sampler (after requests
in sync and gthread workers, in a thread otherwise and under a hard limit). Over the soft limit
it sends the worker ``SIGTERM``, gunicorn's graceful stop: the worker finishes the request it is
serving, leaves its loop and exits, and the arbiter forks a replacement (as for
``max_requests``). Over the hard limit the worker is ``SIGKILL``-ed. Master, after reaping:
the slot says whether memory ended the worker, and
[`forkmem.recycle_stats()`][forkmem.recycle.recycle_stats] counts it.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import TYPE_CHECKING, Any

from forkmem.recycle import (
    RecycleEvent,
    RecycleMonitor,
    RecyclePolicy,
    RecycleSlot,
    counted,
    record_recycle,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from forkmem._common import MemoryUsage

__all__ = ["arm", "collect", "watch"]

INTEGRATION = "gunicorn"
_logger = logging.getLogger("forkmem.gunicorn")


def arm(worker: Any) -> None:
    """Master, in ``pre_fork``: the slot the worker's decision comes back through."""
    worker._forkmem_recycle_slot = RecycleSlot()


def _leave_gracefully(event: RecycleEvent) -> None:
    # From the sampler thread, post_request or a gthread worker's request thread: the signal
    # runs gunicorn's own handler in the main thread (alive = False), and its wake-up pipe gets
    # an idle worker out of select() at once.
    os.kill(os.getpid(), signal.SIGTERM)


def watch(worker: Any, policy: RecyclePolicy) -> Callable[[MemoryUsage], bool]:
    """Worker, in ``post_fork``: the monitor to feed with every sample."""
    monitor = RecycleMonitor(
        policy,
        integration=INTEGRATION,
        served=lambda: int(getattr(worker, "nr", 0)),  # gunicorn's requests-handled counter
        on_soft=_leave_gracefully,
        slot=getattr(worker, "_forkmem_recycle_slot", None),
    )
    worker._forkmem_recycle = monitor
    return monitor.observe


def collect(worker: Any) -> RecycleEvent | None:
    """Master, in ``child_exit``: count the worker's recycle, if memory ended it."""
    slot: RecycleSlot | None = getattr(worker, "_forkmem_recycle_slot", None)
    if slot is None:
        return None
    try:
        event = slot.read(INTEGRATION)
    finally:
        slot.close()
    if event is not None:
        record_recycle(event)
        _logger.info(
            "forkmem: gunicorn worker pid %d was recycled for memory (%s, %s limit); "
            "%d recycled so far",
            event.pid,
            event.reason,
            event.kind,
            counted(INTEGRATION),
        )
    return event
