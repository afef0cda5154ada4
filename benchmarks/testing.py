"""forkmem.testing costs, baseline vs forkmem side by side, in one run.

- ``fork``: a bare ``os.fork()`` + pipe + ``waitpid`` whose child sends one byte (baseline) vs
  ``run_in_child(fn)`` (which also reads the child's smaps_rollup twice and pickles the report).
- ``walk``: a bare walk of every object (``gc.get_objects()`` + referents, ids in a set) vs
  ``copied_objects()``'s attribution walk over the same heap, per million objects.

Usage: ``python benchmarks/testing.py [--forks 30] [--objects 500000]``
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
import time

from _chart import bar_chart

from forkmem.testing import copied_objects, page_snapshot, run_in_child


def bare_fork() -> None:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write_fd, b"x")
        os._exit(0)
    os.close(write_fd)
    os.read(read_fd, 1)
    os.close(read_fd)
    os.waitpid(pid, 0)


def per_call(fn: object, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / n


def bare_walk() -> int:
    seen: set[int] = set()
    stack = gc.get_objects()
    stack.extend(sys.modules.values())
    while stack:
        obj = stack.pop()
        key = id(obj)
        if key in seen:
            continue
        seen.add(key)
        stack.extend(gc.get_referents(obj))
    return len(seen)


def timed_walks() -> tuple[float, float, int]:
    snap = page_snapshot()
    start = time.process_time()
    count = bare_walk()
    bare = time.process_time() - start
    start = time.process_time()
    scanned = copied_objects(since=snap).objects_scanned
    walk = time.process_time() - start
    return bare, walk, max(count, scanned)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forks", type=int, default=30)
    parser.add_argument("--objects", type=int, default=500_000)
    args = parser.parse_args()
    heap = [{"id": i, "name": f"n{i}"} for i in range(args.objects // 3)]
    print(f"# {datetime.date.today()} CPython {platform.python_version()} {platform.release()}")
    base = per_call(bare_fork, args.forks)
    ours = per_call(lambda: run_in_child(int), args.forks)
    print(
        f"fork   bare {base * 1e3:7.2f} ms   run_in_child {ours * 1e3:7.2f} ms   "
        f"ratio {ours / base:5.2f}"
    )
    bare, walk, count = run_in_child(timed_walks).value
    per_m = 1e6 / count
    print(
        f"walk   bare {bare * per_m:7.2f} s/M  attribution  {walk * per_m:7.2f} s/M  "
        f"ratio {walk / bare:5.2f}  ({count} objects, CPU time in the child)"
    )
    del heap
    bar_chart(
        "testing",
        f"forkmem.testing against the bare baseline (fork: {base * 1e3:.1f} vs "
        f"{ours * 1e3:.1f} ms; walk: {bare * per_m:.2f} vs {walk * per_m:.2f} s/M objects)",
        ["one fork, child reports, parent reaps", "walk every object (CPU)"],
        {
            "bare baseline (os.fork + pipe; gc.get_objects + referents)": [1.0, 1.0],
            "forkmem (run_in_child; copied_objects)": [ours / base, walk / bare],
        },
        unit="time, x the baseline",
    )


if __name__ == "__main__":
    main()
