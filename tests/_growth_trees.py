"""Process trees that grow memory at a known rate, for ``forkmem watch`` tests.

Run as a script: ``python _growth_trees.py leak|cow RATE_MIB_PER_S``. It forks two children,
prints one JSON line (``{"root": ..., "children": [...]}``) once they run, and lives until
killed (at most 120 s).

- ``leak``: the first child allocates and keeps RATE MiB/s of new memory; the second idles.
- ``cow``: the parent fills a 96 MiB private mapping first; each child then writes RATE MiB/s
  of it, one byte per page, so every write copies one inherited page.
- ``dentries``: the first child looks up ~RATE MiB/s worth of missing ``.pyc`` names (about
  200 bytes of kernel memory each: negative dentries, as interpreters that cannot write their
  bytecode leave behind); no process memory grows.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import signal
import sys
import time

STEP = 0.05  # seconds between writes: small steps keep the growth close to a straight line
PAGE = mmap.PAGESIZE


def _paced(rate: float, action: object) -> None:
    """Call ``action(nbytes)`` so that ``rate`` bytes per second go by, for at most 120 s."""
    start = time.monotonic()
    done = 0
    while time.monotonic() - start < 120:
        due = int(rate * (time.monotonic() - start))
        if due > done:
            action(due - done)  # type: ignore[operator]
            done = due
        time.sleep(STEP)


def _leak(rate: float) -> None:
    kept: list[bytes] = []
    # Non-zero bytes: the pages are written, so resident at once.
    _paced(rate, lambda n: kept.append(b"\x01" * n))


def _cow(buf: mmap.mmap, rate: float, offset: int) -> None:
    pos = offset

    def write(nbytes: int) -> None:
        nonlocal pos
        for _ in range(max(1, nbytes // PAGE)):
            buf[pos % len(buf)] = 2
            pos += PAGE

    _paced(rate, write)


def _dentries(rate: float, directory: str) -> None:
    count = 0

    def look_up(nbytes: int) -> None:
        nonlocal count
        for _ in range(max(1, nbytes // 200)):
            with contextlib.suppress(FileNotFoundError):
                os.stat(f"{directory}/missing-{count}.cpython-312.pyc")
            count += 1

    _paced(rate, look_up)


def _idle() -> None:
    time.sleep(120)


def _stop(*_: object) -> None:
    raise SystemExit(0)  # runs main's finally: the children go too


def main() -> None:
    kind, rate = sys.argv[1], float(sys.argv[2]) * 1024 * 1024
    bodies = []
    if kind == "leak":
        bodies = [lambda: _leak(rate), _idle]
    elif kind == "dentries":
        directory = sys.argv[3]
        bodies = [lambda: _dentries(rate, directory), _idle]
    else:
        size = 96 * 1024 * 1024
        buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
        for off in range(0, size, PAGE):
            buf[off] = 1
        bodies = [lambda: _cow(buf, rate, 0), lambda: _cow(buf, rate, size // 2)]
    children = []
    for body in bodies:
        pid = os.fork()
        if pid == 0:
            try:
                body()
            finally:
                os._exit(0)
        children.append(pid)
    signal.signal(signal.SIGTERM, _stop)
    print(json.dumps({"root": os.getpid(), "children": children}), flush=True)
    try:
        time.sleep(120)
    finally:
        for c in children:
            os.kill(c, signal.SIGKILL)
            os.waitpid(c, 0)


if __name__ == "__main__":
    main()
