"""A fork server: a quiet copy of this process that forks the workers instead of it (private).

Why: a worker forked from a busy parent shares that parent's pages, and every page the parent
writes afterwards (its loop's allocations, reference counts, collector headers) stays behind as a
private copy in each worker alive at the time. A copy made right after the heap was prepared
(``warmup()``) and that then does nothing but fork keeps every page as it was, so the workers
forked from it only ever pay for what they write themselves.

The workers must still be children of the real parent (it waits for them, reads their exit
codes, signals them). The parent becomes a *child subreaper* (``prctl(PR_SET_CHILD_SUBREAPER)``)
and the server forks twice: the intermediate process exits at once, and the kernel hands its
orphan, the worker, to the nearest subreaper, the parent. Linux only.

Protocol: one ``SOCK_SEQPACKET`` socket pair. A request is a JSON object plus the file
descriptors the worker needs (``SCM_RIGHTS``); the answer is ``{"pid": N}`` or
``{"error": "..."}``. The server exits when the parent closes its end or dies
(``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import struct
import sys
from typing import TYPE_CHECKING, Any, NoReturn

from forkmem.errors import ForkmemError, UnsupportedPlatform

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

__all__ = ["ForkServer", "ForkServerError"]

_logger = logging.getLogger("forkmem.fork_server")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_MAX_MESSAGE = 1 << 16
_MAX_FDS = 16
_PID = struct.Struct("=q")
# Signals whose handlers the parent had when the server was made: the server changes its own,
# and each worker gets the parent's back, as if the parent had forked it.
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


class ForkServerError(ForkmemError, OSError):
    """The fork server is gone or could not fork: the caller forks by itself instead."""


def _prctl(option: int, value: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def _real_exit(status: int) -> NoReturn:
    # ``posix._exit`` itself: integrations may wrap ``os._exit`` to measure workers on the way
    # out, and the server and the intermediate process must not be measured as workers.
    import posix

    posix._exit(status)


class ForkServer:
    """Fork a quiet copy of this process now; later, have it fork workers on request.

    ``prepare(request)`` runs in the server before each fork (e.g. to import what the worker
    will need, so later workers share it); ``run(fds, request)`` runs in the worker and must
    not return (if it does, or raises, the worker exits with status 124).
    """

    def __init__(
        self,
        run: Callable[[list[int], dict[str, Any]], object],
        *,
        prepare: Callable[[dict[str, Any]], object] | None = None,
        on_start: Callable[[], object] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._run = run
        self._prepare = prepare
        self._on_start = on_start
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self.pid = 0
        self.spawned = 0

    @property
    def alive(self) -> bool:
        """The server was started and has not been closed or found dead."""
        return self._sock is not None

    def start(self) -> None:
        """Become a child subreaper and fork the server. Raises :class:`UnsupportedPlatform`
        off Linux and :class:`ForkServerError` when the kernel refuses."""
        if not sys.platform.startswith("linux"):
            raise UnsupportedPlatform("a fork server needs Linux (PR_SET_CHILD_SUBREAPER)")
        if self._sock is not None:
            return
        try:
            _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        except OSError as exc:
            raise ForkServerError(f"cannot become a child subreaper: {exc}") from exc
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        parent = os.getpid()
        handlers = {s: signal.getsignal(s) for s in _SIGNALS}
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the server, reported through its workers
            status = 1
            try:
                mine.close()
                self._serve(theirs, parent, handlers)
                status = 0
            except BaseException:
                with contextlib.suppress(BaseException):
                    _logger.exception("forkmem: the fork server stopped")
            finally:
                _real_exit(status)
        theirs.close()
        mine.settimeout(self._timeout)
        self._sock = mine
        self.pid = pid

    def spawn(self, fds: Sequence[int], request: dict[str, Any]) -> int:
        """Have the server fork a worker with these descriptors; return the worker's pid.

        The worker is this process's child by the time this returns. Raises
        :class:`ForkServerError` (and closes the server) when it cannot.
        """
        sock = self._sock
        if sock is None:
            raise ForkServerError("the fork server is not running")
        try:
            socket.send_fds(sock, [json.dumps(request).encode()], list(fds))
            answer = sock.recv(_MAX_MESSAGE)
        except OSError as exc:  # TimeoutError included: a server that does not answer is dead
            self.close()
            raise ForkServerError(f"the fork server did not answer: {exc}") from exc
        if not answer:
            self.close()
            raise ForkServerError("the fork server exited")
        reply = json.loads(answer)
        if "pid" not in reply:
            raise ForkServerError(f"the fork server could not fork: {reply.get('error')}")
        self.spawned += 1
        return int(reply["pid"])

    def reap_strays(self, keep: Collection[int]) -> int:
        """Reap exited children nobody waits for (orphans the subreaper inherited); return how
        many. ``keep`` are the pids whose exit status someone else will collect."""
        import psutil

        reaped = 0
        try:
            children = psutil.Process().children()
        except psutil.Error:
            return 0
        for child in children:
            if child.pid in keep or child.pid == self.pid:
                continue
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    continue
                if os.waitpid(child.pid, os.WNOHANG)[0] == child.pid:
                    reaped += 1
            except (psutil.Error, ChildProcessError):
                continue
        return reaped

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server (it exits when its socket closes) and reap it."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        import psutil

        with contextlib.suppress(psutil.Error, ChildProcessError):
            proc = psutil.Process(self.pid)
            try:
                proc.wait(timeout)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    # -- the server process ----------------------------------------------------------------

    def _serve(
        self, sock: socket.socket, parent: int, handlers: dict[signal.Signals, Any]
    ) -> None:  # pragma: no cover - runs in the forked server
        with contextlib.suppress(OSError):
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above took effect
            return
        # Ctrl-C reaches the whole process group: the parent decides when the server stops.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in _SIGNALS[1:]:
            signal.signal(sig, signal.SIG_DFL)
        if self._on_start is not None:
            self._on_start()
        while True:
            try:
                data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, _MAX_FDS)
            except InterruptedError:
                continue
            if not data:
                return  # the parent closed its end
            reply: dict[str, Any]
            try:
                reply = {"pid": self._fork_worker(sock, fds, json.loads(data), handlers)}
            except Exception as exc:
                reply = {"error": f"{type(exc).__name__}: {exc}"}
            finally:
                for fd in fds:  # the worker has its copies; ours would keep its sockets open
                    with contextlib.suppress(OSError):
                        os.close(fd)
            try:
                sock.send(json.dumps(reply).encode())
            except OSError:
                return  # the parent is gone

    def _fork_worker(
        self,
        sock: socket.socket,
        fds: list[int],
        request: dict[str, Any],
        handlers: dict[signal.Signals, Any],
    ) -> int:  # pragma: no cover - runs in the forked server
        if self._prepare is not None:
            self._prepare(request)
        read_end, write_end = os.pipe()
        middle = os.fork()
        if middle == 0:
            status = 0
            try:
                os.close(read_end)
                worker = os.fork()
                if worker == 0:
                    os.close(write_end)
                    self._worker(sock, fds, request, handlers)
                os.write(write_end, _PID.pack(worker))
            except BaseException:
                status = 1
            finally:
                _real_exit(status)
        os.close(write_end)
        try:
            _, status = os.waitpid(middle, 0)
            data = os.read(read_end, _PID.size)
        finally:
            os.close(read_end)
        if status != 0 or len(data) != _PID.size:
            raise ForkServerError(f"the intermediate process failed (status {status})")
        pid: int = _PID.unpack(data)[0]
        return pid

    def _worker(
        self,
        sock: socket.socket,
        fds: list[int],
        request: dict[str, Any],
        handlers: dict[signal.Signals, Any],
    ) -> NoReturn:  # pragma: no cover - runs in the worker
        try:
            sock.close()
            for sig, handler in handlers.items():
                with contextlib.suppress(OSError, ValueError, TypeError):
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            self._run(fds, request)
        except BaseException:
            with contextlib.suppress(BaseException):
                import traceback

                traceback.print_exc()
        _real_exit(124)
