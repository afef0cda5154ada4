"""The worker process class of `forkmem._pool`: forkserver workers whose exit status survives
being read from several threads.

Under the forkserver start method, ``Process.exitcode`` reads the status the fork server writes
into the process sentinel. The stdlib's reader is not thread-safe: when two threads ask at once
(the pool's dispatcher reaping a dead worker, and any other thread reading ``exitcode``,
``active_children()`` or ``Process.start()``, which polls every child), one reads the status and
the other reads end-of-file and overwrites it with 255, "the fork server died". A worker killed
by ``SIGKILL`` was then reported as ``exit code 255`` instead of ``signal 9``. Here the read is
serialized per process, so every thread sees the one real status.
"""

from __future__ import annotations

import multiprocessing.connection
import multiprocessing.context
import os
import sys
import threading
from typing import Any

__all__ = ["new_pool_process"]

if sys.platform != "win32":
    from multiprocessing import popen_forkserver

    class _ForkServerPopen(popen_forkserver.Popen):
        def __init__(self, process_obj: Any) -> None:
            self._status_lock = threading.Lock()
            super().__init__(process_obj)

        def poll(self, flag: int = os.WNOHANG) -> int | None:
            if flag != os.WNOHANG and self.returncode is None:
                # A blocking poll waits outside the lock, so it never holds up other readers.
                multiprocessing.connection.wait([self.sentinel])
            with self._status_lock:
                returncode: int | None = super().poll(os.WNOHANG)
                return returncode

    class _ForkServerProcess(multiprocessing.context.ForkServerProcess):
        @staticmethod
        def _Popen(process_obj: Any) -> _ForkServerPopen:
            return _ForkServerPopen(process_obj)


def new_pool_process(ctx: Any, *args: Any, **kwds: Any) -> Any:
    """A pool worker process of ``ctx``: its own class, unless that is the stdlib's forkserver
    class, whose status read is made thread-safe here."""
    if sys.platform != "win32" and ctx.Process is multiprocessing.context.ForkServerProcess:
        return _ForkServerProcess(*args, **kwds)
    return ctx.Process(*args, **kwds)
