"""Pools under SIGKILL: multiprocessing.Pool against forkmem's fork_pool, side by side.

Run: ``python benchmarks/pool_faults.py [--tasks 1000] [--workers 4] [--kills 40] [--timeout 30]``

Each pool runs ``--tasks`` short tasks (0-4 ms) in bursts while the parent ``SIGKILL``s busy
workers at random (the OOM killer's signal) and, between bursts, idle ones. Every pool runs in
its own child process with a deadline: the stdlib pool hangs (a lost task never completes,
and an idle worker killed inside the shared queue's lock stops the pool), so the deadline, not
the pool, ends it. Reported: tasks that returned, tasks that raised, tasks never finished,
and the seconds ``close()`` + ``join()`` took (or "hung").
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

from _chart import bar_chart

from forkmem.errors import WorkerLost
from forkmem.pool import fork_pool


def _task(x: int) -> int:
    time.sleep(random.random() * 0.004)
    return x


def _child_pids() -> list[int]:
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me:
                pids.append(int(entry))
    return pids


def run_one(kind: str, tasks: int, workers: int, kills: int) -> dict[str, object]:
    """In this (child) process: run the pool, print what happened as JSON as it goes."""
    rng = random.Random(7)
    if kind == "stdlib":
        pool = multiprocessing.get_context("fork").Pool(workers)
    else:
        pool = fork_pool(workers, context="fork")
    results = []
    bursts = 10
    per_burst = tasks // bursts
    for burst in range(bursts):
        batch = [
            pool.apply_async(_task, (i,)) for i in range(burst * per_burst, (burst + 1) * per_burst)
        ]
        results += batch
        for _ in range(kills // (2 * bursts)):
            time.sleep(rng.uniform(0.002, 0.01))
            victims = _child_pids()
            if victims:
                os.kill(rng.choice(victims), signal.SIGKILL)  # busy or idle, as it falls
        settle = time.monotonic() + 2.0  # a hung pool must not stall the run
        for result in batch:
            result.wait(max(0.0, settle - time.monotonic()))
        for _ in range(kills // (2 * bursts)):
            victims = _child_pids()
            if victims:
                os.kill(rng.choice(victims), signal.SIGKILL)  # between bursts: idle
    settle = time.monotonic() + 5.0
    for result in results:
        result.wait(max(0.0, settle - time.monotonic()))
    returned = raised = 0
    for result in results:
        if not result.ready():
            continue
        try:
            result.get(timeout=0)
            returned += 1
        except WorkerLost:
            raised += 1
    print(
        json.dumps(
            {"returned": returned, "raised": raised, "pending": len(results) - returned - raised}
        ),
        flush=True,
    )
    started = time.monotonic()
    pool.close()
    pool.join()
    print(json.dumps({"join_seconds": time.monotonic() - started}), flush=True)
    return {}


def measure(kind: str, args: argparse.Namespace) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", kind, "--tasks", str(args.tasks),
           "--workers", str(args.workers), "--kills", str(args.kills)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=args.timeout)
        hung = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        hung = True
    report: dict[str, object] = {"hung": hung}
    for line in out.splitlines():
        if line.startswith("{"):
            report.update(json.loads(line))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--child", choices=["stdlib", "forkmem"])
    args = parser.parse_args(argv)
    if args.child:
        run_one(args.child, args.tasks, args.workers, args.kills)
        return 0
    rows = {kind: measure(kind, args) for kind in ("stdlib", "forkmem")}
    print(
        f"{args.tasks} tasks, {args.workers} workers, {args.kills} SIGKILLs (busy and idle), "
        f"deadline {args.timeout:.0f} s, Python {sys.version.split()[0]}"
    )
    print(f"{'':24} {'multiprocessing.Pool':>22} {'fork_pool':>12}")
    for key, label in (
        ("returned", "tasks returned"),
        ("raised", "raised WorkerLost"),
        ("pending", "never finished"),
    ):
        cells = [str(rows[k].get(key, "-")) for k in ("stdlib", "forkmem")]
        print(f"{label:24} {cells[0]:>22} {cells[1]:>12}")
    cells = []
    for kind in ("stdlib", "forkmem"):
        seconds = rows[kind].get("join_seconds")
        cells.append("hung" if seconds is None else f"{float(seconds):.2f} s")  # type: ignore[arg-type]
    print(f"{'close() + join()':24} {cells[0]:>22} {cells[1]:>12}")
    keys = ("returned", "raised", "pending")
    bar_chart(
        "pool_faults",
        f"{args.tasks} tasks through {args.workers} workers while {args.kills} workers are "
        "SIGKILLed",
        ["tasks returned", "raised WorkerLost", "never finished"],
        {
            label: [float(rows[kind].get(key, 0)) for key in keys]  # type: ignore[arg-type]
            for kind, label in (("stdlib", "multiprocessing.Pool"), ("forkmem", "fork_pool"))
        },
        unit="tasks",
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
