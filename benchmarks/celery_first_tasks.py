"""How much private memory a Celery prefork child builds on its first tasks: the most a
rehearsal (or a refork) could share.

Starts ``celery -A celery_app worker --pool=prefork --concurrency=1`` from ``examples/`` (the
filesystem broker: no server needed), with and without forkmem (``FORKMEM_DISABLE=1``), and
reads the pool child's private memory (USS, from outside) when it is idle, after its first
task, after ``--tasks`` tasks, and after a task that runs ``gc.collect()`` in the child (what a
collection copies of the inherited heap: forkmem's main effect). The first-task growth is what
each child builds lazily for itself; a rehearsal in the main process before the fork could
share at most that.

    python benchmarks/celery_first_tasks.py [--tasks 200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from _chart import bar_chart
from _procs import stop

import forkmem

MiB = 1024 * 1024
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The example's broker layout, shared by its worker and the clients that send it tasks.
sys.path.append(str(EXAMPLES))
from celery_broker import client, prepare  # noqa: E402


def measure(data: Path, tasks: int, disable: bool) -> tuple[int, int, int, int]:
    prepare(data)
    env = dict(os.environ, FORKMEM_CELERY_DIR=str(data), FORKMEM_DISABLE="1" if disable else "0")
    log = data / "worker.log"
    command = [
        sys.executable, "-m", "celery", "-A", "celery_app", "worker", "--pool=prefork",
        "--concurrency=1", "--loglevel=INFO", "--without-heartbeat", "--without-gossip",
        "--without-mingle",
    ]  # fmt: skip
    app = client(data, polling_interval=0.05)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, cwd=EXAMPLES, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start:\n{log.read_text()}")
            time.sleep(0.2)
        time.sleep(1.0)
        (child,) = psutil.Process(proc.pid).children()
        idle = forkmem.memory(child.pid).uss
        app.send_task("celery_app.whoami").get(timeout=30, interval=0.05)
        first = forkmem.memory(child.pid).uss
        results = [app.send_task("celery_app.whoami") for _ in range(tasks - 1)]
        for result in results:
            result.get(timeout=60, interval=0.05)
        later = forkmem.memory(child.pid).uss
        app.send_task("celery_app.private_after_collect").get(timeout=60, interval=0.05)
        collected = forkmem.memory(child.pid).uss
    finally:
        stop(proc, grace=20.0)
    return idle, first, later, collected


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    args = parser.parse_args()
    print(f"Celery prefork child, 1 child, example app, Python {sys.version.split()[0]}")
    print(
        f"{'setup':<10} {'idle':>10} {'1 task':>10} {f'{args.tasks} tasks':>11} "
        f"{'1st-task growth':>16} {'gc.collect()':>12}"
    )
    series: dict[str, list[float]] = {}
    for name, disable in (("stock", True), ("forkmem", False)):
        with tempfile.TemporaryDirectory(prefix="forkmem-celery-bench-") as tmp:
            idle, first, later, collected = measure(Path(tmp), args.tasks, disable)
        label = "stock (FORKMEM_DISABLE=1)" if disable else "forkmem install(app)"
        series[label] = [idle / MiB, first / MiB, later / MiB, collected / MiB]
        print(
            f"{name:<10} {idle / MiB:6.1f} MiB {first / MiB:6.1f} MiB {later / MiB:7.1f} MiB "
            f"{(first - idle) / MiB:12.1f} MiB {collected / MiB:8.1f} MiB"
        )
    bar_chart(
        "celery_first_tasks",
        "Celery prefork child's private memory (USS), 1 child, example app",
        ["idle", "after 1 task", f"after {args.tasks} tasks", "then gc.collect() in the child"],
        series,
        unit="child USS (MiB)",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
