"""Small helpers the server integrations share (private)."""

from __future__ import annotations

import logging
import os

from forkmem._exporter import Exporter, recycle_counts, start_exporter
from forkmem.errors import ForkmemError
from forkmem.forkinfo import fork_info
from forkmem.hooks import run_fork_hooks

__all__ = ["ensure_child_hooks", "route_logs", "start_metrics", "warn_missing_bytecode"]

_logger = logging.getLogger("forkmem")


def ensure_child_hooks() -> None:
    """Run forkmem's "after_in_child" hooks in a fresh worker, unless the fork already did.

    ``os.fork`` (gunicorn, billiard, multiprocessing) runs them through ``os.register_at_fork``;
    a server that forks in C does not, so its post-fork hook calls this. Never both.
    """
    if fork_info().via_hook:  # only ever True in a forked process
        return
    run_fork_hooks("after_in_child")


def route_logs(source: logging.Logger) -> None:
    """Send the ``"forkmem"`` logger's records to ``source``'s handlers if nobody set it up.

    Servers such as gunicorn log through their own handlers and leave the root logger bare, so
    INFO lines from forkmem would otherwise vanish.
    """
    if _logger.handlers or logging.getLogger().handlers or not source.handlers:
        return
    for handler in source.handlers:
        _logger.addHandler(handler)
    if _logger.level == logging.NOTSET:
        _logger.setLevel(source.getEffectiveLevel())
    _logger.propagate = False


def warn_missing_bytecode() -> None:
    """One log warning when the loaded modules lack bytecode caches."""
    from forkmem.bytecode import warn_if_missing_bytecode  # the check's code loads on first use

    try:
        warn_if_missing_bytecode()
    except Exception:  # a diagnostic must never stop a server from starting
        _logger.debug("forkmem: bytecode check failed", exc_info=True)


def start_metrics(listen: str | None, server: str) -> Exporter | None:
    """Serve Prometheus metrics for this process's tree on ``listen`` (the ``metrics=``
    option), from a ``forkmem export`` process beside it. A failure is logged, never raised:
    metrics are not worth a server that does not start. ``FORKMEM_METRICS`` in the environment
    stands in for a missing ``listen``."""
    if listen is None:
        listen = os.environ.get("FORKMEM_METRICS") or None
    if listen is None:
        return None
    try:
        exporter = start_exporter(listen, stats=True)
    except ForkmemError as exc:
        _logger.error("forkmem: no metrics for the %s tree: %s", server, exc)
        return None
    # Recycle counts live in this process; each recycle is logged here, so a handler on the
    # "forkmem" logger sends the new counts at once, with no thread in a forking master.
    _logger.addHandler(_RecyclePush(exporter))
    _logger.info(
        "forkmem: serving %s metrics at %s (exporter pid %d)", server, exporter.url, exporter.pid
    )
    return exporter


class _RecyclePush(logging.Handler):
    """Sends [`forkmem.recycle_stats()`][forkmem.recycle_stats] to the exporter after each
    forkmem log record."""

    def __init__(self, exporter: Exporter) -> None:
        super().__init__()
        self.exporter = exporter
        self.owner = os.getpid()  # forked workers inherit the handler: only the master sends

    def emit(self, record: logging.LogRecord) -> None:
        if os.getpid() != self.owner:
            return
        self.exporter.push(recycle_counts())
