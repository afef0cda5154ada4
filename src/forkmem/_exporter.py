"""A ``forkmem export`` process beside a server, for the integrations' ``metrics=`` option.

The exporter runs as a separate process (a child of the server's master, reading the master's
tree from ``/proc``) rather than as a thread in the master: a master forks workers all day, and
a thread running across ``fork()`` can leave a lock held in every child. Nothing of
prometheus_client is imported into the master, so the workers do not inherit it either.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import select
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from forkmem.errors import InvalidArgument, MissingDependency
from forkmem.recycle import recycle_stats

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["Exporter", "parse_listen", "recycle_counts", "start_exporter"]


def parse_listen(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:9464"``, ``":9464"`` for loopback) as ``(host, port)``."""
    if not isinstance(address, str):
        raise InvalidArgument(f"listen address must be a 'HOST:PORT' string, not {address!r}")
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise InvalidArgument(f"listen address must be HOST:PORT, not {address!r}")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host:
        host = "127.0.0.1"  # never open a port to the network unless asked
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise InvalidArgument(f"listen address needs an IP address, not {host!r}") from None
    return host, int(port_text)


def recycle_counts() -> dict[str, Any]:
    """This process's [`forkmem.recycle_stats()`][forkmem.recycle_stats] as the plain dict the
    collector exports (``soft``, ``hard``, and ``last_measure``/``last_value`` once a worker
    was recycled)."""
    stats = recycle_stats()
    out: dict[str, Any] = {"soft": stats.soft, "hard": stats.hard}
    if stats.last is not None:
        out.update(last_measure=stats.last.measure, last_value=stats.last.value)
    return out


class Exporter:
    """A running ``forkmem export`` process: ``url`` serves ``/metrics``; `close()` stops it."""

    def __init__(self, proc: subprocess.Popen[bytes], url: str) -> None:
        self.proc = proc
        self.url = url
        self._sent: bytes | None = None

    def push(self, counts: Mapping[str, Any]) -> None:
        """Send the master's recycle counts (``stats=True``); never blocks, never raises."""
        line = json.dumps(counts, separators=(",", ":")).encode() + b"\n"
        if self.proc.stdin is None or line == self._sent:
            return
        try:
            os.write(self.proc.stdin.fileno(), line)
        except (BlockingIOError, BrokenPipeError, ValueError, OSError):
            return  # the exporter is gone or behind: metrics are never worth blocking for
        self._sent = line

    @property
    def pid(self) -> int:
        return self.proc.pid

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_exporter(
    listen: str, *, pid: int | None = None, stats: bool = False, timeout: float = 30.0
) -> Exporter:
    """Start ``forkmem export`` for the tree of ``pid`` (default: the caller) on ``listen``.

    Returns once it serves. Raises [`MissingDependency`][forkmem.MissingDependency] without
    prometheus_client and [`InvalidArgument`][forkmem.InvalidArgument] for a bad address or when the
    exporter cannot start (a port in use: its own message is on stderr). It exits by itself when
    the root process does. With ``stats``, `Exporter.push()` sends it recycle counts.
    """
    parse_listen(listen)
    if importlib.util.find_spec("prometheus_client") is None:
        raise MissingDependency("metrics=", "prometheus_client", "metrics")
    root = os.getpid() if pid is None else pid
    argv = [sys.executable, "-m", "forkmem", "export", str(root), "--listen", listen]
    proc = subprocess.Popen(
        [*argv, "--stats-stdin"] if stats else argv,
        stdin=subprocess.PIPE if stats else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        # stderr stays the server's: a failure to start is explained in the server's log.
    )
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            proc.kill()
            proc.wait()
            raise InvalidArgument(f"forkmem export did not start within {timeout:g} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            code = proc.wait()
            raise InvalidArgument(
                f"forkmem export exited with status {code} instead of serving {listen} "
                "(its message is on stderr)"
            )
        line += chunk
    proc.stdout.close()  # nothing more is written; the exporter never blocks on a full pipe
    if proc.stdin is not None:
        os.set_blocking(proc.stdin.fileno(), False)
    url = line.decode("utf-8", "replace").split("serving ", 1)[-1].split()[0]
    return Exporter(proc, url)
