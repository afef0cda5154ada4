"""Memory recycling for `forkmem.pool.fork_pool()` workers (both sides of the pipe).

In the worker: a sampler feeds a [`RecycleMonitor`][forkmem.recycle.RecycleMonitor]. Over the soft
limit, the worker tells the parent (so an idle worker is stopped at once) and leaves after its
current task; over the hard limit it tells the parent why, then ends itself. In the parent: each
notice is counted in [`forkmem.recycle_stats()`][forkmem.recycle.recycle_stats].
"""

from __future__ import annotations

from multiprocessing import util
from typing import TYPE_CHECKING

from forkmem._pool_worker import RecycleNotice
from forkmem._sampler import Sampler
from forkmem.recycle import RecycleEvent, RecycleMonitor, RecyclePolicy, record_recycle

if TYPE_CHECKING:
    from collections.abc import Callable

    from forkmem._pool import SupervisedPool
    from forkmem._pool_worker import WorkerLink

__all__ = ["count_recycle", "recycling_setup"]


def recycling_setup(
    policy: RecyclePolicy,
    duty_cycle: float,
    log_peak: bool,
    link: WorkerLink,
    served: Callable[[], int],
) -> Callable[[], bool]:
    """Start the worker's sampler and monitor; returns "leave after this task?"."""

    def tell_parent(event: RecycleEvent) -> None:
        link.send(("recycle", RecycleNotice(event.kind == "hard", event.reason, event)))

    def end_now(event: RecycleEvent) -> None:
        tell_parent(event)
        RecycleMonitor.end_worker(event)

    monitor = RecycleMonitor(
        policy, integration="pool", served=served, on_soft=tell_parent, on_hard=end_now
    )
    sampler = Sampler(duty_cycle=duty_cycle, on_sample=monitor.observe).start()
    # The worker's loop ends (its own recycle, the pool's stop, maxtasksperchild) while the
    # sampling thread may be deciding: it marks the monitor retiring, logs, then sends the notice,
    # and the log write lets the main thread run on to os._exit. The sampler is a daemon thread,
    # so the notice died with it: the decision was logged but never counted (5 logged, 0 counted
    # in one run of 1,000 leaky tasks). Stopping it (a join) before the exit lets a decision in
    # progress reach the parent. Pool workers leave through os._exit: multiprocessing's finalizers
    # still run, whichever way the loop ended.
    if log_peak:
        util.Finalize(
            sampler, sampler.stop_and_log, kwargs={"label": "pool worker"}, exitpriority=10
        )
    else:
        util.Finalize(sampler, sampler.stop, kwargs={"final_sample": False}, exitpriority=10)
    return lambda: monitor.retiring


def count_recycle(pool: SupervisedPool, pid: int, notice: RecycleNotice) -> None:
    """The parent's side: count the worker's decision (the worker logged it)."""
    if isinstance(notice.payload, RecycleEvent):
        record_recycle(notice.payload)
