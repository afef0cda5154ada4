"""Fork-loop benchmark: Airflow PR #60505's pattern, per-fork freeze strategies side by side.

A parent holding a long-lived heap runs a loop; every iteration creates cyclic garbage (a
batch that dies at the end of the iteration, plus a few cycles that live for 40 iterations in a
cache before being evicted, so some garbage reaches the oldest generation) and forks a
short-lived child (which exits at once), as a dag-processor does per parse. Each mode runs in a
fresh interpreter:

- ``plain``:   no freezing at all (the baseline: every ratio is relative to it)
- ``naive``:   ``before=gc.freeze, after_in_parent=gc.unfreeze`` (``freeze_around_fork("naive")``)
- ``young``:   ``forkmem.freeze_around_fork("young")`` (default): ``gc.collect(1)`` before the
  fork, ``gc.freeze()`` in the child, CPython's full-collection rule replayed in the parent
- ``young0``:  like ``young`` with ``gc.collect(0)`` and no full-collection replay (why gen 1 too)
- ``youngpf``: ``gc.collect(1)`` + ``gc.freeze()`` before, ``gc.unfreeze()`` after in the parent
  (the parent-side variant: why forkmem freezes in the child)
- ``full``:    ``forkmem.freeze_around_fork("full")``: full ``gc.collect()`` before each fork
- ``once``:    ``with forkmem.frozen():`` around the whole loop (PR #60505's final choice)

Printed: time per iteration (creating the garbage + fork + reaping the child) as a ratio to
``plain``, and the parent's RSS/PSS growth over the measured iterations (after a warm-up).

Usage: ``python benchmarks/fork_loop.py [--iterations 5000] [--heap-mib 40] [--modes ...]``
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import subprocess
import sys
import time
from collections import deque
from typing import Any

from _chart import bar_chart

MODES = ("plain", "naive", "young", "young0", "youngpf", "full", "once")
LIFETIME = 40  # iterations a long-lived cycle stays in the cache
MiB = 1 << 20


class Node:
    """A small object that ends up in reference cycles."""

    __slots__ = ("__weakref__", "payload", "peer")

    def __init__(self, payload: int) -> None:
        self.payload = [payload]
        self.peer: Node | None = None


_cache: deque[Node] = deque()


def make_garbage(cycles: int, long_lived: int) -> None:
    """One iteration's work: cyclic objects that live until the iteration ends, and a few that
    live ``LIFETIME`` iterations in a cache.

    With the default batch the young generation's threshold is crossed mid-iteration, so some
    of the batch is promoted to generation 1 before it becomes garbage, as parse results are;
    evicted cache entries die in the oldest generation, where only a full collection finds them.
    """
    batch = []
    for i in range(cycles):
        a, b = Node(i), Node(i)
        a.peer, b.peer = b, a
        batch.append(a)
    del batch
    for i in range(long_lived):
        a, b = Node(i), Node(i)
        a.peer, b.peer = b, a
        _cache.append(a)
    while len(_cache) > long_lived * LIFETIME:
        _cache.popleft()


def build_heap(mib: int) -> list[object]:
    """Long-lived small tracked objects (the parent's loaded modules and state)."""
    heap: list[object] = []
    target = _rss() + mib * MiB
    while _rss() < target:
        heap.extend({"k": [i]} for i in range(50_000))
    return heap


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("VmRSS missing")


def _pss() -> int:
    from forkmem.usage import memory

    pss = memory().pss
    return -1 if pss is None else pss


def fork_child() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _cpu() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def setup_mode(mode: str) -> object:
    """Install the mode's freezing; returns what keeps it alive."""
    import forkmem

    if mode in ("naive", "young", "full"):
        return forkmem.freeze_around_fork(mode)  # type: ignore[arg-type]
    if mode == "young0":
        return forkmem.at_fork(
            before=lambda: gc.collect(0), after_in_child=gc.freeze, name="young0"
        )
    if mode == "youngpf":

        def before() -> None:
            gc.collect(1)
            gc.freeze()

        return forkmem.at_fork(before=before, after_in_parent=gc.unfreeze, name="youngpf")
    if mode == "once":
        block = forkmem.frozen()
        block.__enter__()
        return block
    return None


def worker(
    mode: str, heap_mib: int, cycles: int, long_lived: int, warmup: int, cap_mib: int
) -> None:
    """Run one mode in this interpreter, driven over stdin/stdout by the main process.

    A mode whose RSS grows by more than ``cap_mib`` stops early (the leaking ones would
    otherwise eat gigabytes); it reports how many iterations it ran.
    """
    heap = build_heap(heap_mib)
    gc.collect()
    keep = setup_mode(mode)
    for _ in range(warmup):
        make_garbage(cycles, long_lived)
        fork_child()
    stats0 = [s["collections"] for s in gc.get_stats()]
    rss0, pss0 = _rss(), _pss()
    peak = rss0
    done = 0
    capped = False
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            ran = 0
            wall0, cpu0 = time.perf_counter(), _cpu()
            for i in range(0 if capped else int(cmd[1])):
                make_garbage(cycles, long_lived)
                fork_child()
                ran += 1
                if i % 50 == 0:
                    peak = max(peak, _rss())
                    if peak - rss0 > cap_mib * MiB:
                        capped = True
                        break
            wall, cpu = time.perf_counter() - wall0, _cpu() - cpu0
            done += ran
            print(json.dumps({"wall": wall, "cpu": cpu, "ran": ran}), flush=True)
        else:
            rss1, pss1 = _rss(), _pss()
            stats1 = [s["collections"] for s in gc.get_stats()]
            print(
                json.dumps(
                    {
                        "iterations": done,
                        "capped": capped,
                        "rss_growth": rss1 - rss0,
                        "peak_rss_growth": max(peak, rss1) - rss0,
                        "pss_growth": pss1 - pss0,
                        "gc_collections": [b - a for a, b in zip(stats0, stats1, strict=True)],
                    }
                ),
                flush=True,
            )
            break
    del heap, keep


def _median_ratio(
    chunks: list[tuple[float, float, int]], plain: list[tuple[float, float, int]], field: int
) -> float:
    """Median over rounds of this mode's per-iteration time over plain's in the same round."""
    ratios = sorted(
        (c[field] / c[2]) / (p[field] / p[2])
        for c, p in zip(chunks, plain, strict=True)
        if c[2] and p[2] and p[field] > 0
    )
    if not ratios:
        return float("nan")
    mid = len(ratios) // 2
    return ratios[mid] if len(ratios) % 2 else (ratios[mid - 1] + ratios[mid]) / 2


def _mib(n: float) -> str:
    return f"{n / MiB:+.1f}"


class Worker:
    """One mode's interpreter, fed chunks of iterations in turn with the others."""

    def __init__(self, mode: str, args: argparse.Namespace) -> None:
        self.mode = mode
        self.wall = self.cpu = 0.0
        self.chunks: list[tuple[float, float, int]] = []  # (wall, cpu, iterations) per round
        self.proc = subprocess.Popen(
            [
                sys.executable,
                __file__,
                f"--worker={mode}",
                f"--heap-mib={args.heap_mib}",
                f"--cycles={args.cycles}",
                f"--long-lived={args.long_lived}",
                f"--warmup={args.warmup}",
                f"--cap-mib={args.cap_mib}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self._ask(None)  # wait for "ready"

    def _ask(self, command: str | None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"mode {self.mode}: worker died (exit {self.proc.wait(10)})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def run(self, n: int) -> None:
        answer = self._ask(f"run {n}")
        self.wall += answer["wall"]
        self.cpu += answer["cpu"]
        self.chunks.append((answer["wall"], answer["cpu"], answer["ran"]))

    def finish(self) -> dict[str, Any]:
        answer = self._ask("stats")
        self.proc.wait(60)
        return answer

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=5000, help="forks per mode (5000)")
    parser.add_argument(
        "--full-iterations", type=int, default=500, help="forks for 'full', ~30x slower (500)"
    )
    parser.add_argument("--heap-mib", type=int, default=40, help="parent's long-lived heap (40)")
    parser.add_argument("--cycles", type=int, default=1000, help="garbage cycles per iteration")
    parser.add_argument(
        "--long-lived", type=int, default=0, help=f"cycles per iteration cached {LIFETIME} its"
    )
    parser.add_argument("--warmup", type=int, default=100, help="unmeasured iterations first")
    parser.add_argument(
        "--cap-mib", type=int, default=150, help="stop a mode whose RSS grew more (150)"
    )
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds (10)")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        worker(args.worker, args.heap_mib, args.cycles, args.long_lived, args.warmup, args.cap_mib)
        return 0
    if min(args.iterations, args.full_iterations, args.rounds) < 1:
        parser.error("--iterations, --full-iterations and --rounds must be >= 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}; choose from {MODES}")
    if "plain" not in modes:
        modes.insert(0, "plain")
    print(
        f"# fork loop {datetime.date.today()}  Python {platform.python_version()}  "
        f"heap={args.heap_mib} MiB  cycles/iter={args.cycles}+{args.long_lived} long-lived  "
        f"gc thresholds={gc.get_threshold()}  rounds={args.rounds}",
        flush=True,
    )
    workers: dict[str, Worker] = {}
    try:
        for mode in modes:
            workers[mode] = Worker(mode, args)
        # Interleave the modes in chunks so a noisy neighbour slows them all alike.
        for r in range(args.rounds):
            order = modes[r % len(modes) :] + modes[: r % len(modes)]
            for mode in order:
                total = args.full_iterations if mode == "full" else args.iterations
                chunk = total // args.rounds + (1 if r < total % args.rounds else 0)
                if chunk:
                    workers[mode].run(chunk)
        results = {
            mode: {**w.finish(), "wall": w.wall, "cpu": w.cpu, "chunks": w.chunks}
            for mode, w in workers.items()
        }
    finally:
        for w in workers.values():
            w.kill()

    header = (
        f"{'mode':<8} {'forks':>6} {'ms/iter':>8} {'x plain':>8} {'cpu x':>6} "
        f"{'RSS MiB':>8} {'peak MiB':>9} {'PSS MiB':>8}  gc runs (gen0/1/2)"
    )
    print(header)
    print("-" * len(header))
    plain_chunks = results["plain"]["chunks"]
    for mode in modes:
        r = results[mode]
        n = r["iterations"]
        wall_x = _median_ratio(r["chunks"], plain_chunks, 0)
        cpu_x = _median_ratio(r["chunks"], plain_chunks, 1)
        runs = "/".join(str(k) for k in r["gc_collections"])
        mark = "*" if r["capped"] else " "
        print(
            f"{mode:<8} {n:>5}{mark} {r['wall'] / n * 1000:>8.3f} {wall_x:>7.2f}x {cpu_x:>5.2f}x "
            f"{_mib(r['rss_growth']):>8} {_mib(r['peak_rss_growth']):>9} "
            f"{_mib(r['pss_growth']):>8}  {runs}"
        )
    print("x plain / cpu x: median over rounds of (per-iteration time / plain's in the same round)")
    if any(r["capped"] for r in results.values()):
        print(f"* stopped early: RSS grew by more than --cap-mib={args.cap_mib} MiB")
    bar_chart(
        "fork_loop",
        f"Parent RSS growth over the fork loop, per freeze strategy (Python "
        f"{platform.python_version()}; lower is better)",
        modes,
        {"RSS growth, MiB": [results[m]["rss_growth"] / 2**20 for m in modes]},
        unit="parent RSS growth, MiB",
        highlight=[m for m in modes if m != "plain"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
