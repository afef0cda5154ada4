"""Per-call cost of forkmem.memory against psutil, a bare smaps_rollup read, and the fast tier.

Run: ``python benchmarks/measure.py [--rounds N] [--gib 1.0] [--mappings 2000] [--children 32]``

Three targets, each measured in interleaved rounds (one call of every method per round, so a
busy machine slows all methods alike; the median is reported):

1. a process with ~2,000 mappings and ~1 GiB resident (the kernel's page walk dominates);
2. a small process (this one), where Python-side overhead is most visible;
3. a tree of 32 children under a parent with 64 MiB resident: ``memory_tree`` against psutil's
   ``children()`` + ``memory_full_info()`` per process, bare reads and the fast tier.

Methods: ``bare read`` = os.open + os.read to EOF + close of /proc/PID/smaps_rollup, no parsing
(the floor any smaps_rollup-based tool pays); ``forkmem.memory``; ``psutil memory_full_info``
(Process object created once); ``forkmem.rss_breakdown`` (fast tier, /proc/PID/status);
``smaps summed`` (the fallback for kernels without smaps_rollup), for scale.
"""

from __future__ import annotations

import argparse
import contextlib
import mmap
import os
import signal
import statistics
import sys
import time
from typing import TYPE_CHECKING

import psutil
from _chart import bar_chart

import forkmem
from forkmem import _backend_linux

if TYPE_CHECKING:
    from collections.abc import Callable

PAGE = mmap.PAGESIZE
MiB = 1024 * 1024


def bare_read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 16384):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def spawn(body: Callable[[], None]) -> int:
    """Fork a child that runs ``body`` (which sets up and signals readiness), then sleeps."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            body()
            os.write(w, b"x")
            signal.pause()
        finally:
            os._exit(0)
    os.close(w)
    if os.read(r, 1) != b"x":
        raise RuntimeError("benchmark child failed to start")
    os.close(r)
    return pid


def big_process(gib: float, mappings: int) -> Callable[[], None]:
    def body() -> None:
        keep = []
        for i in range(mappings):
            # Alternate protections so neighbouring regions cannot merge into one VMA.
            prot = mmap.PROT_READ | mmap.PROT_WRITE if i % 2 == 0 else mmap.PROT_READ
            m = mmap.mmap(-1, 2 * PAGE, flags=mmap.MAP_PRIVATE, prot=prot)
            if i % 2 == 0:
                m[0] = 1
            keep.append(m)
        big = mmap.mmap(-1, int(gib * 1024 * MiB), flags=mmap.MAP_PRIVATE)
        for off in range(0, len(big), PAGE):
            big[off] = 1
        keep.append(big)
        globals()["_keep"] = keep

    return body


def tree_root(children: int) -> Callable[[], None]:
    def body() -> None:
        heap = mmap.mmap(-1, 64 * MiB, flags=mmap.MAP_PRIVATE)
        for off in range(0, len(heap), PAGE):
            heap[off] = 1
        globals()["_keep"] = heap
        for _ in range(children):
            spawn(lambda: None)

    return body


def bench(
    methods: dict[str, Callable[[], object]], rounds: int, block: int = 5
) -> dict[str, tuple[float, float]]:
    """Median (CPU µs, wall µs) per call of each method.

    Methods take turns in ``rounds`` (so load changes on a shared machine hit all alike); each
    turn makes one untimed call, to refill caches that the previous method's page walk evicted,
    then ``block`` timed calls. CPU time (user + system of this process, including the kernel's
    page walk done on our behalf) is the figure to compare on a busy machine; wall time also
    counts time spent waiting for a CPU.
    """
    cpu: dict[str, list[float]] = {name: [] for name in methods}
    wall: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            fn()
            for _ in range(block):
                c0 = time.process_time_ns()
                w0 = time.perf_counter_ns()
                fn()
                wall[name].append((time.perf_counter_ns() - w0) / 1000)
                cpu[name].append((time.process_time_ns() - c0) / 1000)
    return {n: (statistics.median(cpu[n]), statistics.median(wall[n])) for n in methods}


def report(title: str, results: dict[str, tuple[float, float]], floor: str, per: int = 1) -> None:
    print(f"\n{title}")
    print(
        f"  {'method':<32}{'CPU µs':>12}{'/process':>10}{'ratio':>8}"
        f"{'wall µs':>12}{'/process':>10}{'ratio':>8}"
    )
    base_cpu, base_wall = results[floor]
    for name, (c, w) in results.items():
        print(
            f"  {name:<32}{c:>12.1f}{c / per:>10.1f}{c / base_cpu:>7.2f}x"
            f"{w:>12.1f}{w / per:>10.1f}{w / base_wall:>7.2f}x"
        )
    print(f"  (ratios against '{floor}'; medians of interleaved rounds)")


def count_mappings(pid: int) -> int:
    with open(f"/proc/{pid}/maps", "rb") as f:
        return f.read().count(b"\n")


def run_single(pid: int, rounds: int, block: int, title: str) -> None:
    path = f"/proc/{pid}/smaps_rollup"
    status = f"/proc/{pid}/status"
    proc = psutil.Process(pid)
    m = forkmem.memory(pid)
    title += f": {count_mappings(pid)} mappings, RSS {forkmem.format_bytes(m.rss)}"
    methods: dict[str, Callable[[], object]] = {
        "bare read of smaps_rollup": lambda: bare_read(path),
        "forkmem.memory": lambda: forkmem.memory(pid),
        "psutil memory_full_info": proc.memory_full_info,
        "forkmem.rss_breakdown (fast)": lambda: forkmem.rss_breakdown(pid),
    }
    methods["bare read of status"] = lambda: bare_read(status)
    results = bench(methods, rounds, block)
    smaps = bench({"smaps summed (fallback)": lambda: _backend_linux.memory_from_smaps(pid)}, 3, 1)
    report(title, {**results, **smaps}, "bare read of smaps_rollup")


def run_tree(root: int, rounds: int) -> None:
    """Time every way of measuring the tree; chart the CPU cost per process of each."""
    pids = [root] + [c.pid for c in psutil.Process(root).children(recursive=True)]
    paths = [f"/proc/{p}/smaps_rollup" for p in pids]
    procs = [psutil.Process(p) for p in pids]

    def psutil_tree() -> list[object]:
        kids = psutil.Process(root).children(recursive=True)
        return [psutil.Process(root).memory_full_info()] + [k.memory_full_info() for k in kids]

    methods: dict[str, Callable[[], object]] = {
        "bare reads": lambda: [bare_read(p) for p in paths],
        "forkmem.memory per pid": lambda: [forkmem.memory(p) for p in pids],
        "forkmem read-all-then-parse": lambda: _backend_linux.memory_many(pids),
        "forkmem.memory_tree (+ walk)": lambda: forkmem.memory_tree(root),
        "psutil children + full_info": psutil_tree,
        "psutil full_info per pid": lambda: [p.memory_full_info() for p in procs],
        "forkmem.rss_breakdown per pid": lambda: [forkmem.rss_breakdown(p) for p in pids],
    }
    results = bench(methods, rounds, block=2)
    tree = forkmem.memory_tree(root)
    title = (
        f"Tree: root + {len(pids) - 1} children, total RSS {forkmem.format_bytes(tree.total_rss)},"
        f" total PSS {forkmem.format_bytes(tree.total_pss)}"
    )
    title += "\n  (rows without 'walk'/'children' get the pid list; those two find it with psutil)"
    report(title, results, "bare reads", per=len(pids))
    names = list(results)
    bar_chart(
        "measure",
        f"Measuring a tree of {len(pids)} processes: CPU per process (lower is better)",
        [n.replace(" + ", "\n+ ").replace(" per ", "\nper ") for n in names],
        {"CPU µs per process": [results[n][0] / len(pids) for n in names]},
        unit="CPU µs per process",
        highlight=[
            n.replace(" + ", "\n+ ").replace(" per ", "\nper ")
            for n in names
            if n.startswith("forkmem")
        ],
    )


def kill_tree(pid: int) -> None:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        kids = []
    for p in [*kids, psutil.Process(pid)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    os.waitpid(pid, 0)
    psutil.wait_procs(kids, timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--mappings", type=int, default=2000)
    parser.add_argument("--children", type=int, default=32)
    args = parser.parse_args()
    print(
        f"forkmem {forkmem.__version__}, psutil {psutil.__version__}, "
        f"Python {sys.version.split()[0]}, Linux {os.uname().release}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    big = spawn(big_process(args.gib, args.mappings))
    try:
        run_single(big, args.rounds, 3, "Big process")
    finally:
        kill_tree(big)
    run_single(os.getpid(), args.rounds, 50, "Small process (this one)")
    root = spawn(tree_root(args.children))
    try:
        run_tree(root, args.rounds)
    finally:
        kill_tree(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
