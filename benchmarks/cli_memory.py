"""``forkmem memory`` as a fresh process, side by side with ps_mem and smem on the same tree.

Run: ``python benchmarks/cli_memory.py [--rounds 15] [--children 8] [--mib 64]``
(needs ``pip install ps_mem`` and Debian's ``smem``; a missing tool is reported and skipped).

A parent holding ``--mib`` MiB of Python objects forks ``--children`` children that each touch
a slice of the inherited heap; every tool then reports the tree, each run as a new process the
way an operator types it. Rounds interleave the tools (one run of each per round) so a busy
machine slows them alike; the table gives the median and fastest wall time, the ratio to
ps_mem, and each tool's total PSS with its difference from forkmem's.

- forkmem: ``forkmem memory ROOT --tree`` (the table an operator reads; Σ PSS from one extra
  ``--json`` run, not timed)
- ps_mem: ``ps_mem -t -p PID,PID,...`` (its "RAM used" total: Σ Private + Σ shared PSS)
- smem: ``smem -H -t -c pss -P REGEX`` over the tree's unique command-line marker (Σ PSS, KiB)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

from _chart import bar_chart

from forkmem._ptable import descendants

MiB = 1024 * 1024

TREE = r"""
import os, sys, time
heap = [str(i) * 4 for i in range(int(sys.argv[1]) * 1024 * 1024 // 64)]
kids = []
for n in range(int(sys.argv[2])):
    pid = os.fork()
    if pid == 0:
        part = heap[n::int(sys.argv[2]) * 4]
        total = sum(len(s) for s in part)  # refcount writes: some pages become private
        time.sleep(600)
        os._exit(0)
    kids.append(pid)
print("ready", flush=True)
time.sleep(600)
"""


def start_tree(mib: int, children: int, marker: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", TREE, str(mib), str(children), marker],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit("the tree did not start")
    deadline = time.monotonic() + 30
    while len(descendants(proc.pid)) < children and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # let the children finish touching their slices
    return proc


def run(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--children", type=int, default=8)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()

    marker = f"forkmem-bench-{os.getpid()}"
    tree = start_tree(args.mib, args.children, marker)
    try:
        pids = [tree.pid, *descendants(tree.pid)]
        forkmem_cli = [sys.executable, "-m", "forkmem"]
        if shutil.which("forkmem"):
            forkmem_cli = [shutil.which("forkmem") or "forkmem"]
        tools: dict[str, list[str]] = {
            "forkmem": [*forkmem_cli, "memory", str(tree.pid), "--tree"],
        }
        ps_mem = shutil.which("ps_mem")
        if ps_mem:
            tools["ps_mem"] = [ps_mem, "-t", "-p", ",".join(map(str, pids))]
        else:
            print("ps_mem not found (pip install ps_mem): skipped")
        smem = shutil.which("smem")
        if smem:
            # "[f]" keeps smem's own command line, which holds the regex, from matching it.
            tools["smem"] = [smem, "-H", "-t", "-c", "pss", "-P", marker[:-1] + f"[{marker[-1]}]"]
        else:
            print("smem not found (apt-get install smem): skipped")

        times: dict[str, list[float]] = {name: [] for name in tools}
        totals: dict[str, float] = {}
        for argv in tools.values():  # warm the page cache and the bytecode caches
            run(argv)
        for _ in range(args.rounds):
            for name, argv in tools.items():
                elapsed, out = run(argv)
                times[name].append(elapsed)
                if name != "forkmem":
                    totals[name] = parse_total(name, out)
        report = json.loads(run([*tools["forkmem"], "--json"])[1])
        totals["forkmem"] = float(report["totals"]["pss"])
        root_rss = float(report["totals"]["rss"])
    finally:
        tree.send_signal(signal.SIGKILL)
        tree.wait()
        for pid in pids[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    print(
        f"tree: 1 parent ({args.mib} MiB of str objects requested) + {args.children} children, "
        f"Σ RSS {root_rss / MiB:.0f} MiB; {args.rounds} interleaved rounds, wall time per run "
        "as a new process"
    )
    print(
        f"{'tool':<10}{'median':>10}{'fastest':>10}{'vs ps_mem':>11}{'Σ PSS':>12}{'vs forkmem':>12}"
    )
    base = statistics.median(times["ps_mem"]) if "ps_mem" in times else None
    for name, values in times.items():
        median = statistics.median(values)
        ratio = f"{median / base:.2f}x" if base else "n/a"
        diff = (totals[name] - totals["forkmem"]) / totals["forkmem"]
        print(
            f"{name:<10}{median * 1000:>9.1f}ms{min(values) * 1000:>9.1f}ms{ratio:>11}"
            f"{totals[name] / MiB:>7.1f} MiB{diff:>+11.2%}"
        )
    chart(times)


def parse_total(name: str, out: str) -> float:
    if name == "ps_mem":
        return float(out.split()[-1])
    # smem -t: the last line is the total, in KiB
    return float(out.strip().splitlines()[-1].split()[-1]) * 1024


def chart(times: dict[str, list[float]]) -> None:
    names = sorted(times, key=lambda n: n == "forkmem")  # the baselines first, forkmem last
    bar_chart(
        "cli_memory",
        "One tree report as a new process (median wall time, lower is better)",
        names,
        {"ms": [statistics.median(times[n]) * 1000 for n in names]},
        unit="ms",
        highlight=["forkmem"],
    )


if __name__ == "__main__":
    main()
