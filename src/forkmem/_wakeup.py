"""A self-pipe wake-up for a thread that waits in ``multiprocessing.connection.wait()``."""

from __future__ import annotations

import contextlib
import os

__all__ = ["Waker"]


class Waker:
    """A self-pipe: other threads ``put()`` to wake a thread waiting on its ``fileno()``.

    It also serves as the stdlib pool cache's "emptied" notifier, which only calls ``put``.
    """

    def __init__(self) -> None:
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        os.set_blocking(self._r, False)
        # Once closed, the numbers may belong to someone else's file: never touch them again.
        self._closed = False

    def fileno(self) -> int:
        return self._r

    def fds(self) -> tuple[int, int]:
        return self._r, self._w

    def put(self, _: object = None) -> None:
        if self._closed:
            return
        # A full pipe means a wake-up is pending anyway.
        with contextlib.suppress(OSError):
            os.write(self._w, b"x")

    def drain(self) -> None:
        if self._closed:
            return
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)
