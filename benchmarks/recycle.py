"""What recycling by memory costs: fork_pool workers with the sampler and a limit, against none.

Run: ``python benchmarks/recycle.py [--heap-mib 150] [--tasks 4000] [--rounds 5] [--workers 2]``

The parent builds a shared heap (``--heap-mib`` of small lists, like an app's caches) so every
worker's ``smaps_rollup`` read costs what it costs in a real worker. Each round runs the same
CPU-bound tasks (~1 ms each) through two pools, in alternating order:

- **off**: ``fork_pool(workers)``, no sampler;
- **on**: ``fork_pool(workers, max_private_memory="1 TiB")``: the sampler reads every
  worker's memory at its 1% duty cycle and the policy judges each sample (the limit is never
  reached, so what is measured is the watching, not a recycle), with ``sample_memory=True`` so
  each worker's sampler reports its own cost when the worker exits.

Reported (medians over the rounds): wall time for the tasks, tasks per second, and the workers'
CPU seconds (user + system, from ``RUSAGE_CHILDREN`` once the pool has been joined), each as
on/off ratios. A 1% duty cycle bounds the sampler to 0.01 CPU-seconds per worker-second.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _chart import bar_chart

from forkmem.pool import fork_pool

# What each worker's sampler says about itself when it exits (sample_memory=True).
_PEAK = re.compile(r"(\d+) samples over ([\d.]+) s, ([\d.]+) ms each")


def sampler_duty(log_text: str) -> list[float]:
    """Share of one CPU each worker's sampler spent reading memory (samples x cost / span)."""
    duties = []
    for match in _PEAK.finditer(log_text):
        if float(match[2]) > 0:
            duties.append(int(match[1]) * float(match[3]) / 1000 / float(match[2]))
    return duties


def spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i * i
    return total


def run(kind: str, workers: int, tasks: int, work: int) -> tuple[float, float]:
    """(wall seconds, worker CPU seconds) for one pool's tasks."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    options: dict[str, object] = {}
    if kind == "on":
        options = {"max_private_memory": "1 TiB", "sample_memory": True}
    pool = fork_pool(workers, context="fork", **options)
    pool.map(spin, [1] * workers * 4, chunksize=1)  # every worker up (and sampled once)
    started = time.perf_counter()
    pool.map(spin, [work] * tasks, chunksize=1)
    wall = time.perf_counter() - started
    pool.close()
    pool.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heap-mib", type=int, default=150)
    parser.add_argument("--tasks", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--work", type=int, default=20_000, help="loop length of one task")
    args = parser.parse_args(argv)

    # Workers log in their own processes: a file handler they inherit collects their lines.
    log_file = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115
    handler = logging.FileHandler(log_file.name)
    logging.getLogger("forkmem").addHandler(handler)
    logging.getLogger("forkmem").setLevel(logging.INFO)
    heap = [[i, f"item-{i}"] for i in range(args.heap_mib * 5_600)]
    gc.collect()
    results: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for round_ in range(args.rounds):
        order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
        for kind in order:
            results[kind].append(run(kind, args.workers, args.tasks, args.work))
    del heap
    handler.close()
    duties = sampler_duty(Path(log_file.name).read_text())
    os.unlink(log_file.name)

    def median(kind: str, index: int) -> float:
        return statistics.median(r[index] for r in results[kind])

    print(
        f"fork_pool, {args.workers} workers, {args.tasks} tasks of spin({args.work}), "
        f"{args.heap_mib} MiB shared heap, {args.rounds} rounds, Python {sys.version.split()[0]}"
    )
    print(f"{'':28} {'sampler off':>12} {'on, limit set':>14} {'on/off':>8}")
    off_wall, on_wall = median("off", 0), median("on", 0)
    off_cpu, on_cpu = median("off", 1), median("on", 1)
    print(f"{'wall time (s)':28} {off_wall:12.3f} {on_wall:14.3f} {on_wall / off_wall:8.3f}")
    off_rate, on_rate = args.tasks / off_wall, args.tasks / on_wall
    print(f"{'tasks per second':28} {off_rate:12.0f} {on_rate:14.0f} {on_rate / off_rate:8.3f}")
    print(f"{'worker CPU (s)':28} {off_cpu:12.3f} {on_cpu:14.3f} {on_cpu / off_cpu:8.3f}")
    extra = (on_cpu - off_cpu) / (args.workers * on_wall)
    print(f"extra worker CPU, on - off, per worker: {extra:.2%} of one CPU (noisy)")
    if duties:
        print(
            f"sampler's own account, per worker: median {statistics.median(duties):.2%} of one "
            f"CPU, max {max(duties):.2%} ({len(duties)} workers; the bound is 1%)"
        )
    bar_chart(
        "recycle",
        "fork_pool with a memory limit (sampler on) vs none, as on/off (1.0 = free)",
        ["wall time", "tasks per second", "worker CPU"],
        {
            "sampler off": [1.0, 1.0, 1.0],
            "on, limit set": [on_wall / off_wall, on_rate / off_rate, on_cpu / off_cpu],
        },
        unit="ratio to sampler off",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
