"""A fork server: a quiet copy of this process that forks the workers instead of it (private).

Why: a worker forked from a busy parent shares that parent's pages, and every page the parent
writes afterwards (its loop's allocations, reference counts, collector headers) stays behind as a
private copy in each worker alive at the time. A copy made right after the heap was prepared
(``warmup()``) and that then does nothing but fork keeps every page as it was, so the workers
forked from it only ever pay for what they write themselves.

The workers must still be children of the real parent (it waits for them, reads their exit
codes, signals them). For the length of each request the parent is a *child subreaper*
(``prctl(PR_SET_CHILD_SUBREAPER)``), and the server forks twice: the intermediate process exits
at once, and the kernel hands its orphan, the worker, to the nearest subreaper, the parent.
Only for that moment: a subreaper also inherits every other orphan among its descendants, and
nobody would reap those. Linux only.

Protocol: one ``SOCK_SEQPACKET`` socket pair. A request is a JSON object plus the file
descriptors the worker needs (``SCM_RIGHTS``), plus the read end of a "go" pipe; the answer is
``{"pid": N}`` or ``{"error": "..."}``. The worker waits for one byte on the go pipe, which the
parent writes only once it has the pid: a worker whose parent gave up (timeout, dead server)
sees end-of-file instead and exits without touching the descriptors, so no file is ever served
twice. The server exits when the parent closes its end or dies (``PR_SET_PDEATHSIG``).

The server need not be a fresh copy: `ForkServer.open` makes the socket pair, a child the
parent forks for its own reasons later calls `ForkServer.serve_here` once its heap is worth
copying (gunicorn's refork: a worker warmed by real requests), and the parent
adopts it (`ForkServer.adopt`).
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

import psutil

from forkmem.errors import ForkmemError, InvalidArgument, UnsupportedPlatform
from forkmem.hooks import at_fork

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from forkmem.hooks import ForkHook

__all__ = ["ForkServer", "ForkServerError"]

_logger = logging.getLogger("forkmem.fork_server")

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_MAX_MESSAGE = 1 << 16
_MAX_FDS = 15  # the worker's descriptors; one more travels with them: the go pipe
_PID = struct.Struct("=q")
# Signals whose handlers the parent had when the server was made: the server changes its own,
# and each worker gets the parent's back, as if the parent had forked it.
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


# open() -> (opener's end, server's end, opener pid, signal handlers), until adopt().
_Pair = tuple[socket.socket, socket.socket, int, dict[signal.Signals, Any]]


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
        timeout: float = 20.0,
    ) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise InvalidArgument(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._run = run
        self._prepare = prepare
        self._on_start = on_start
        self._timeout = timeout
        self._sock: socket.socket | None = None
        self._hook: ForkHook | None = None
        self._pair: tuple[socket.socket, socket.socket, int, dict[signal.Signals, Any]] | None = (
            None
        )
        self.pid = 0
        self.spawned = 0

    @property
    def alive(self) -> bool:
        """The server was started and has not been closed or found dead."""
        return self._sock is not None

    def start(self) -> None:
        """Fork the server. Raises `UnsupportedPlatform` off Linux and
        `ForkServerError` when the kernel refuses (no subreaper, no socket, no fork)."""
        if self._sock is not None:
            return
        self.open()
        try:
            pid = os.fork()
        except OSError as exc:
            self._close_pair()
            raise ForkServerError(f"cannot fork the fork server: {exc}") from exc
        if pid == 0:  # pragma: no cover - runs in the server, reported through its workers
            self.serve_here()
        self.adopt(pid)

    def open(self) -> None:
        """Make the server's socket pair now, without a server yet: a process this one forks
        later becomes the server by calling `serve_here`, and this process then calls
        `adopt` with its pid. (`start` is the three steps at once.)"""
        if not sys.platform.startswith("linux"):
            raise UnsupportedPlatform("a fork server needs Linux (PR_SET_CHILD_SUBREAPER)")
        if self._pair is not None:
            return
        try:  # is the subreaper available at all? (set for real around each request)
            _prctl(_PR_SET_CHILD_SUBREAPER, 0)
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            raise ForkServerError(f"cannot start a fork server: {exc}") from exc
        self._pair = (mine, theirs, os.getpid(), {s: signal.getsignal(s) for s in _SIGNALS})

    def _close_pair(self) -> None:
        pair, self._pair = self._pair, None
        if pair is not None:
            pair[0].close()
            pair[1].close()

    def serve_here(self) -> NoReturn:  # pragma: no cover - runs in the server
        """Become the server, in a child of the process that called `open`; never
        returns. Workers are then forked from this process's heap, as it is now."""
        status = 1
        try:
            if self._pair is None:
                raise ForkServerError("serve_here() needs open() first")
            mine, theirs, parent, handlers = self._pair
            mine.close()
            self._serve(theirs, parent, handlers)
            status = 0
        except BaseException:
            with contextlib.suppress(BaseException):
                _logger.exception("forkmem: the fork server stopped")
        finally:
            _real_exit(status)

    def adopt(self, pid: int) -> None:
        """In the process that called `open`: child ``pid`` is serving now; spawn() asks
        it from here on."""
        if self._pair is None:
            raise ForkServerError("adopt() needs open() first")
        mine, theirs, _parent, _handlers = self._pair
        self._pair = None
        theirs.close()
        mine.settimeout(self._timeout)
        self._sock = mine
        self.pid = pid
        # A process this one forks by itself meanwhile must not hold the server's socket: the
        # server would never see end-of-file while it lives.
        self._hook = at_fork(after_in_child=self._forget, name="forkmem.fork_server.forget")

    def close_client_end(self) -> None:
        """In a child of the opener that will not serve (a sibling of the future server): drop
        the opener's end, which is not this process's to use."""
        if self._pair is not None:
            self._pair[0].close()

    def _forget(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def spawn(self, fds: Sequence[int], request: dict[str, Any]) -> int:
        """Have the server fork a worker with these descriptors; return the worker's pid.

        The worker is this process's child by the time this returns. Raises
        `ForkServerError` (and stops the server) when it cannot; the worker, if one was
        forked, then exits without using the descriptors. Raises
        [`InvalidArgument`][forkmem.InvalidArgument] for a request that is not a JSON object or too
        many descriptors.
        """
        sock = self._sock
        if sock is None:
            raise ForkServerError("the fork server is not running")
        if not isinstance(request, dict) or len(fds) > _MAX_FDS:
            raise InvalidArgument(
                f"spawn() takes a dict request and at most {_MAX_FDS} descriptors"
            )
        try:
            message = json.dumps({**request, "_fds": len(fds)}).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(f"the request is not JSON: {exc}") from exc
        if len(message) > _MAX_MESSAGE:
            raise InvalidArgument(f"the request is larger than {_MAX_MESSAGE} bytes")
        go_read, go_write = os.pipe()
        try:
            try:
                _prctl(_PR_SET_CHILD_SUBREAPER, 1)
                try:
                    socket.send_fds(sock, [message], [*fds, go_read])
                    os.close(go_read)
                    go_read = -1
                    answer = sock.recv(_MAX_MESSAGE)
                finally:
                    _prctl(_PR_SET_CHILD_SUBREAPER, 0)
            except OSError as exc:  # TimeoutError included: a server that does not answer
                self.close(timeout=0)
                raise ForkServerError(f"the fork server did not answer: {exc}") from exc
            if not answer:
                self.close(timeout=0)
                raise ForkServerError("the fork server exited")
            try:
                reply = json.loads(answer)
            except ValueError:
                reply = None
            pid = reply.get("pid") if isinstance(reply, dict) else None
            if not isinstance(pid, int):
                error = reply.get("error") if isinstance(reply, dict) else repr(answer[:200])
                raise ForkServerError(f"the fork server could not fork: {error}")
            os.write(go_write, b"1")  # the pid is known: the worker may start
        finally:
            os.close(go_write)
            if go_read >= 0:
                os.close(go_read)
        self.spawned += 1
        return pid

    def close(self, timeout: float = 5.0) -> None:
        """Stop the server (it exits when its socket closes) and reap it; after ``timeout``
        seconds (at once with 0) it is killed."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        sock, self._sock = self._sock, None
        if sock is None:
            return
        sock.close()
        with contextlib.suppress(psutil.Error, ChildProcessError):
            proc = psutil.Process(self.pid)
            try:
                proc.wait(timeout)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(5.0)

    # -- the server process ----------------------------------------------------------------

    def _serve(
        self, sock: socket.socket, parent: int, handlers: dict[signal.Signals, Any]
    ) -> None:  # pragma: no cover - runs in the forked server
        with contextlib.suppress(OSError):
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before the line above took effect
            return
        # Ctrl-C reaches the whole process group: the parent decides when the server stops.
        # The parent's own handlers make no sense here; what it ignores, the server ignores.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for sig in _SIGNALS[1:]:
            if handlers.get(sig) is not signal.SIG_IGN:
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
                request = json.loads(data)
                if len(fds) != request.pop("_fds", -1) + 1:  # the kernel may drop some
                    raise ForkServerError(f"received {len(fds)} descriptors, not all of them")
                reply = {"pid": self._fork_worker(sock, fds, request, handlers)}
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
        try:
            middle = os.fork()
        except OSError:
            os.close(read_end)
            os.close(write_end)
            raise
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
        *fds, go = fds
        try:
            sock.close()
            # Wait until the parent has the pid; end-of-file means it gave up on this worker.
            if os.read(go, 1) != b"1":
                _real_exit(0)
            os.close(go)
            for sig, handler in handlers.items():
                with contextlib.suppress(OSError, ValueError, TypeError):
                    signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            self._run(fds, request)
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                import traceback

                print(
                    f"forkmem fork server: worker failed, exiting with 124: {exc!r}",
                    file=sys.stderr,
                )
                traceback.print_exc()
        os._exit(124)  # os._exit, not posix._exit: an integration may measure the worker here
