"""The one refork mold token, and what the workers tell the master about it (private).

The token is one byte in a pipe the master makes before its first fork: whichever worker reads
it becomes the mold. The worker says so on a second pipe: a claim when it takes the token, and
its pid again once it is the mold. So the master knows who holds the token, and when that
worker dies before it becomes the mold (a timeout's SIGKILL, the OOM killer, a crash), it puts
the byte back: the next worker to get there claims it. Without that, one unlucky kill meant no
mold for the master's whole life.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import struct
import sys
import termios
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Container

__all__ = ["MoldToken"]

_logger = logging.getLogger("forkmem.gunicorn")

# One write each (atomic in a pipe): b"c" + pid, it claimed the token; b"m" + pid, it is the
# mold now.
_MESSAGE = struct.Struct("=cq")
# A token gone from its pipe with no claim announced (its taker died between taking it and
# saying so, a few instructions) is issued again after this long.
UNCLAIMED_GRACE = 10.0


class MoldToken:
    """The token pipe and the announce pipe; the master's and the workers' ends."""

    def __init__(self) -> None:
        self._token = (-1, -1)
        self._announce = (-1, -1)
        self._claimant = 0  # master: the worker that said it took the token
        self._unclaimed_since: float | None = None

    def open(self) -> None:
        """In the master, before the first fork: both pipes, the token in its pipe."""
        token_r, token_w = os.pipe()
        os.set_blocking(token_r, False)
        os.write(token_w, b"m")
        announce_r, announce_w = os.pipe()
        os.set_blocking(announce_r, False)
        self._token, self._announce = (token_r, token_w), (announce_r, announce_w)

    @property
    def open_here(self) -> bool:
        """This process still holds the pipes (not a mold, nor a worker the mold forked)."""
        return self._token[0] >= 0

    def close(self) -> None:
        """Close every end this process holds (the mold, and the workers it forks)."""
        # Each number closed once, then forgotten: a later os.close() of a reused number would
        # close someone else's descriptor.
        for fd in (*self._token, *self._announce):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._token = self._announce = (-1, -1)

    # -- workers -----------------------------------------------------------------------------

    def forked(self) -> None:
        """In a worker the master forked: it may claim, never read the master's messages."""
        if self._announce[0] >= 0:
            with contextlib.suppress(OSError):
                os.close(self._announce[0])
            self._announce = (-1, self._announce[1])

    def claim(self) -> bool:
        """Whether this worker read the token byte (and told the master so)."""
        try:
            if os.read(self._token[0], 1) != b"m":
                return False
        except OSError:  # BlockingIOError included: another worker has it
            return False
        self._tell(b"c")
        return True

    def announce_mold(self) -> None:
        """In the claimant, warmed: it is the mold now."""
        self._tell(b"m")

    def _tell(self, kind: bytes) -> None:
        os.write(self._announce[1], _MESSAGE.pack(kind, os.getpid()))

    # -- master ------------------------------------------------------------------------------

    def mold_announced(self) -> int:
        """The pid of the worker that says it is the mold, or 0; claims read on the way."""
        while True:
            try:
                data = os.read(self._announce[0], _MESSAGE.size * 16)
            except OSError:  # BlockingIOError included: nothing new
                return 0
            if not data:
                return 0
            # Whole messages only: each was one atomic write of _MESSAGE.size bytes.
            for kind, pid in _MESSAGE.iter_unpack(data[: len(data) - len(data) % _MESSAGE.size]):
                if kind == b"m":
                    self._claimant = 0
                    return int(pid)
                if kind == b"c":
                    self._claimant = pid

    def taken(self) -> bool:
        """Whether the token byte is out of its pipe."""
        waiting = bytearray(4)
        try:
            fcntl.ioctl(self._token[0], termios.FIONREAD, waiting)
        except OSError:
            return False
        return int.from_bytes(waiting, sys.byteorder) == 0

    def reissue_if_lost(self, workers: Container[int]) -> None:
        """No mold yet: put the token back if the worker that took it is not among ``workers``
        (the master's worker table: gunicorn drops a worker from it when it reaps it)."""
        if self._claimant:
            if self._claimant in workers:
                return  # it serves its last requests, or becomes the mold now
            why = f"worker pid {self._claimant}, which claimed it, exited before it became the mold"
        elif self.taken():
            now = time.monotonic()
            if self._unclaimed_since is None:
                self._unclaimed_since = now
            if now - self._unclaimed_since < UNCLAIMED_GRACE:
                return
            why = "the worker that took it exited before it said so"
        else:
            self._unclaimed_since = None
            return
        self._claimant = 0
        self._unclaimed_since = None
        os.write(self._token[1], b"m")
        _logger.warning(
            "forkmem: the mold token is lost (%s); issued again: the next worker to get there "
            "claims it",
            why,
        )
