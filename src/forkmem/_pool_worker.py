"""The worker side of `forkmem._pool`: the loop each pool worker runs, and its pipe.

A worker takes one task at a time from its own pipe, says when it starts it (so the parent
knows whether a death lost the task), and sends the result back. Results and recycle notices
can come from two threads (the main loop and the memory sampler), so sends are serialized.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import multiprocessing.pool
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["RecycleNotice", "WorkerLink", "worker_main"]


class RecycleNotice:
    """What a worker sends when it asks to be recycled (memory over the limit)."""

    __slots__ = ("hard", "message", "payload")

    def __init__(self, hard: bool, message: str, payload: object = None) -> None:
        self.hard = hard
        self.message = message
        self.payload = payload


class WorkerLink:
    """The worker's end of its pipe: results and notices from any thread, one at a time."""

    __slots__ = ("_conn", "_lock")

    def __init__(self, conn: multiprocessing.connection.Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def send(self, message: object) -> None:
        with self._lock:
            self._conn.send(message)

    def recv(self) -> Any:
        return self._conn.recv()


def _run_task(task: tuple[Any, ...]) -> tuple[Any, Any, tuple[bool, Any]]:
    job, i, func, args, kwds = task
    try:
        return job, i, (True, func(*args, **kwds))
    except Exception as exc:
        if func is not multiprocessing.pool._helper_reraises_exception:  # type: ignore[attr-defined]
            exc = multiprocessing.pool.ExceptionWithTraceback(exc, exc.__traceback__)  # type: ignore[attr-defined]
        return job, i, (False, exc)


def worker_main(
    conn: multiprocessing.connection.Connection,
    close_fds: tuple[int, ...],
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
    maxtasks: int | None,
    setup: Callable[[WorkerLink, Callable[[], int]], Callable[[], bool]] | None,
) -> None:
    """The loop a worker runs: one task from its pipe, its result back, until told to stop.

    ``setup`` (recycling) gets the link and a "tasks done" counter and returns a predicate
    that says whether the worker should leave after the task it just finished.
    """
    # Under "fork" the worker inherits the parent's ends of every other worker's pipe; keeping
    # them open would hide the parent's death from those workers.
    for fd in close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    link = WorkerLink(conn)
    completed = 0
    if initializer is not None:
        initializer(*initargs)
    should_leave = setup(link, lambda: completed) if setup is not None else None
    while maxtasks is None or completed < maxtasks:
        try:
            task = link.recv()
        except (EOFError, OSError):
            break  # the parent is gone
        if task is None:
            break
        # Say it started: if this worker dies before this line reaches the parent, the task
        # never ran and goes to another worker; after it, the task fails with WorkerLost.
        link.send(("start",))
        job, i, result = _run_task(task)
        task = None
        try:
            link.send(("result", job, i, result))
        except Exception as exc:  # an unpicklable result: report it, as the stdlib does
            wrapped = multiprocessing.pool.MaybeEncodingError(exc, result[1])  # type: ignore[attr-defined]
            link.send(("result", job, i, (False, wrapped)))
        del result
        completed += 1
        if should_leave is not None and should_leave():
            break
