"""Real servers for the integration tests: start one, wait until it is up, load it, stop it.

Each server runs in its own session (process group), logging to a file, so one signal reaches
every worker and nothing outlives the test.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping, Sequence
    from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # loopback only
        return bytes(response.read())


def stop(proc: subprocess.Popen[bytes], grace: float = 20.0, *, group: bool = False) -> None:
    """SIGTERM (a graceful stop: the master reaps its workers), then SIGKILL what is left.

    ``group`` sends the SIGTERM to the whole process group, for a manager whose own graceful
    exit can be swallowed (Airflow's, when the signal lands in a weakref callback)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of the group
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def _up(url: str | None, log: Path, line: str | None) -> bool:
    if line is not None and line not in log.read_text():
        return False
    if url is not None:
        try:
            get(url, timeout=2)
        except (urllib.error.URLError, OSError):
            return False
    return True


@contextlib.contextmanager
def serve(
    command: Sequence[str],
    log: Path,
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    url: str | None = None,
    line: str | None = None,
    timeout: float = 60.0,
    grace: float = 20.0,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` until the block ends; up once ``url`` answers and ``log`` holds ``line``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            list(command), cwd=cwd, env=dict(env), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while not _up(url, log, line):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{' '.join(command[:4])} did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield proc
    finally:
        stop(proc, grace)


def wrk(
    url: str, seconds: int, *, connections: int = 4, script: Path | None = None
) -> tuple[int, int]:
    """Load ``url`` with wrk (2 threads) for ``seconds``: requests made, and how many failed.

    Failed: socket errors (connect, read, write, timeout over 10 s) and non-2xx/3xx answers.
    """
    lua = ["-s", str(script)] if script is not None else []
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", *lua, url],
        capture_output=True, text=True, timeout=seconds + 60, check=True,
    ).stdout  # fmt: skip
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    failed = (sum(int(g) for g in errors.groups()) if errors else 0) + (
        int(non2xx.group(1)) if non2xx else 0
    )
    return requests, failed
