"""Real forked children for the measurement tests, driven over pipes with bounded waits."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import select
import signal
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

TIMEOUT = 30.0


class Pipe:
    """One end of a pair of pipes carrying JSON lines."""

    def __init__(self, read_fd: int, write_fd: int) -> None:
        self.read_fd = read_fd
        self.write_fd = write_fd
        self._buf = b""

    def send(self, obj: Any) -> None:
        os.write(self.write_fd, json.dumps(obj).encode() + b"\n")

    def recv(self, timeout: float = TIMEOUT) -> Any:
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("child did not answer in time")
            chunk = os.read(self.read_fd, 65536)
            if not chunk:
                raise EOFError("child closed its pipe (crashed?)")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)


class Child(Pipe):
    """The parent's handle on a forked child."""

    pid: int


@contextlib.contextmanager
def forked(body: Callable[[Pipe], None]) -> Iterator[Child]:
    """Fork a child running ``body(pipe)``; always kill and reap it on exit."""
    p2c_r, p2c_w = os.pipe()
    c2p_r, c2p_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            os.close(p2c_w)
            os.close(c2p_r)
            body(Pipe(p2c_r, c2p_w))
        except BaseException:
            code = 70
        finally:
            os._exit(code)
    os.close(p2c_r)
    os.close(c2p_w)
    child = Child(c2p_r, p2c_w)
    child.pid = pid
    try:
        yield child
    finally:
        os.close(c2p_r)
        os.close(p2c_w)
        reap(pid, kill=True)


def reap(pid: int, *, kill: bool = False, timeout: float = 10.0) -> int | None:
    """Wait (bounded) for ``pid``; SIGKILL it first when ``kill``. Returns its wait status."""
    if kill:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return None
        if done:
            return status
        time.sleep(0.005)
    raise TimeoutError(f"child {pid} did not exit")


def wait_zombie(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` has exited but is not reaped yet."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat", "rb") as f:
            if f.read().rpartition(b")")[2].split()[0] == b"Z":
                return
        time.sleep(0.005)
    raise TimeoutError(f"child {pid} did not become a zombie")


def sleeper(pipe: Pipe) -> None:
    """Child body: report ready, then block until the parent says anything."""
    pipe.send("ready")
    pipe.recv(timeout=60)


def touched_map(size: int) -> mmap.mmap:
    """A private anonymous mapping of ``size`` bytes, every page written (resident and dirty).

    Python's anonymous mmap defaults to MAP_SHARED, which fork never copies: ask for private.
    """
    buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    for off in range(0, size, mmap.PAGESIZE):
        buf[off] = 1
    return buf


def write_on_command(buf: mmap.mmap, nbytes: int) -> Callable[[Pipe], None]:
    """A child body: say "ready", wait for a byte, write ``nbytes`` into ``buf``, say "written".

    Between the two messages the interpreter stays quiet (raw pipe I/O, one memcpy), so almost
    nothing but the ``nbytes`` gets copied; then it waits to be released.
    """

    def body(pipe: Pipe) -> None:
        payload = b"\x02" * nbytes
        pipe.send("ready")
        os.read(pipe.read_fd, 1)
        buf[: len(payload)] = payload
        os.write(pipe.write_fd, b'"written"\n')
        os.read(pipe.read_fd, 1)

    return body
