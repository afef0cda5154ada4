"""Stock ``airflow dag-processor`` against forkmem's entrypoint, side by side, in one run.

Needs apache-airflow-core (``pip install 'forkmem[airflow]'``). It makes a temporary
AIRFLOW_HOME with a sqlite database (``airflow db migrate``), writes one-task DAG files, then runs
each variant for ``--seconds`` with ``parsing_processes=2``:

- ``stock``: ``airflow dag-processor`` as shipped (Airflow's own bare ``gc.freeze()``).
- ``off``: forkmem's entrypoint with ``--forkmem-no-freeze``: stock behaviour, plus each parse
  child measuring itself as it exits (the baseline for the parse-child figures).
- ``freeze``: ``--forkmem-plain``: full collection, then freeze.
- ``warmup``: ``forkmem.warmup()`` (str hashes, malloc_trim, freeze).
- ``immortalize``: ``forkmem.warmup(immortalize=True)`` (CPython 3.12+).
- ``rehearse``: immortalize, plus the parse rehearsal.
- ``default-unpacked``: ``default`` with ``--forkmem-no-pack-code`` (the rehearsal leaves the
  code objects where the imports put them).
- ``default``: the entrypoint with no flags: the best mode this runtime supports (immortalize
  where it can, rehearsal, fork server).

Printed per variant: the process tree's PSS (``forkmem.memory_tree``, sampled), peak and mean
over the parsing phase; parse-child private memory (USS) at exit, median and max, from each
child's own measurement; and the same sampled from outside (a lower bound, the only figure for
``stock``, whose children cannot report themselves). Ratios are against ``off``, or ``stock``
for the tree figures.

    python benchmarks/airflow_dag_processor.py [--files 24] [--seconds 30] [--variants ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from _chart import bar_chart
from _procs import stop

import forkmem
from forkmem._immortal import unsupported_reason

MiB = 1024 * 1024

DAG_TEMPLATE = """\
import time
from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG(dag_id="bench_dag_{n:03d}", schedule=None, start_date=datetime(2024, 1, 1)):
    EmptyOperator(task_id="only_task")

time.sleep({sleep})  # stands for a DAG file that takes this long to parse
"""

VARIANTS: dict[str, list[str]] = {
    "stock": [sys.executable, "-m", "airflow", "dag-processor"],
    "off": ["--forkmem-no-freeze"],
    "freeze": ["--forkmem-plain"],
    "warmup": ["--forkmem-plain", "--forkmem-warmup"],
    "immortalize": ["--forkmem-plain", "--forkmem-immortalize"],
    "rehearse": ["--forkmem-plain", "--forkmem-immortalize", "--forkmem-rehearse"],
    "default-unpacked": ["--forkmem-no-pack-code"],
    "default": [],
}


@dataclass
class Result:
    name: str
    tree_pss: list[int] = field(default_factory=list)
    sampled_child_uss: dict[int, int] = field(default_factory=dict)
    exit_private: list[int] = field(default_factory=list)
    setup_seconds: float | None = None
    frozen: int | None = None


def prepare(home: Path, files: int, processes: int, sleep: float = 0.0) -> dict[str, str]:
    dags = home / "dags"
    dags.mkdir(parents=True, exist_ok=True)
    for n in range(1, files + 1):
        (dags / f"bench_dag_{n:03d}.py").write_text(DAG_TEMPLATE.format(n=n, sleep=sleep))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FORKMEM_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES=str(processes),
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return env


def run_variant(
    name: str, env: dict[str, str], workdir: Path, seconds: float, interval: float
) -> Result:
    result = Result(name)
    stats = workdir / f"{name}.jsonl"
    if name == "stock":
        cmd = VARIANTS[name]
    else:
        cmd = [
            sys.executable,
            "-m",
            "forkmem.integrations.airflow",
            "dag-processor",
            "--forkmem-stats-file",
            str(stats),
            *VARIANTS[name],
        ]
    with (workdir / f"{name}.log").open("wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        parsing = False
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    tree = forkmem.memory_tree(proc.pid)
                except (forkmem.NoSuchProcess, forkmem.AccessDenied):
                    break
                # The parsing phase starts with the first parse child; before it, imports.
                parsing = parsing or len(tree.processes) > 1
                if parsing and tree.total_pss is not None:
                    result.tree_pss.append(tree.total_pss)
                for child in tree.processes[1:]:
                    if child.uss is not None:
                        old = result.sampled_child_uss.get(child.pid, 0)
                        result.sampled_child_uss[child.pid] = max(old, child.uss)
                time.sleep(interval)
        finally:
            stop(proc, grace=20.0, group=True)
    if stats.exists():
        for line in stats.read_text().splitlines():
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if record.get("event") == "parse_child" and record.get("private") is not None:
                    result.exit_private.append(record["private"])
                elif record.get("event") == "setup":
                    result.setup_seconds = record.get("seconds")
                    result.frozen = record.get("frozen")
    return result


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / MiB:7.1f}"


def _ratio(value: float | None, base: float | None) -> str:
    if value is None or not base:
        return "   -"
    return f"{value / base:5.2f}"


def _median(values: list[int]) -> float | None:
    return statistics.median(values) if values else None


def report(results: list[Result], args: argparse.Namespace) -> None:
    by = {r.name: r for r in results}
    stock = by.get("stock")
    off = by.get("off")
    base_peak = max(stock.tree_pss) if stock and stock.tree_pss else None
    base_mean = statistics.mean(stock.tree_pss) if stock and stock.tree_pss else None
    base_med = _median(off.exit_private) if off else None
    base_max = max(off.exit_private) if off and off.exit_private else None
    print(
        f"\nAirflow dag-processor, {args.files} one-task DAG files, parsing_processes="
        f"{args.processes}, {args.parse_seconds:g} s parse time per file, {args.seconds:.0f} s per "
        "variant, Python "
        f"{'.'.join(map(str, sys.version_info[:3]))}, sampled every {args.interval} s\n"
    )
    print(
        "| variant | tree PSS peak MiB (x) | tree PSS mean MiB (x) | child private at exit: "
        "median MiB (x) | max MiB (x) | children | child private sampled median MiB | "
        "set-up s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        peak = max(r.tree_pss) if r.tree_pss else None
        mean = statistics.mean(r.tree_pss) if r.tree_pss else None
        med = _median(r.exit_private)
        top = max(r.exit_private) if r.exit_private else None
        sampled = _median(list(r.sampled_child_uss.values()))
        setup = "-" if r.setup_seconds is None else f"{r.setup_seconds:.2f}"
        print(
            f"| {r.name} | {_mib(peak)} ({_ratio(peak, base_peak)}) "
            f"| {_mib(mean)} ({_ratio(mean, base_mean)}) "
            f"| {_mib(med)} ({_ratio(med, base_med)}) | {_mib(top)} ({_ratio(top, base_max)}) "
            f"| {len(r.exit_private) or len(r.sampled_child_uss)} | {_mib(sampled)} | {setup} |"
        )


def chart(results: list[Result], args: argparse.Namespace) -> None:
    """Parse children's private memory at exit; ``off`` (stock behaviour, measured) in grey."""
    labels = {"off": "off (stock behaviour)", "default": "default (no flags)"}
    series = {
        labels.get(r.name, r.name): [
            statistics.median(r.exit_private) / MiB,
            max(r.exit_private) / MiB,
        ]
        for r in results
        if r.exit_private
    }
    bar_chart(
        "airflow_dag_processor",
        f"Airflow dag-processor parse children, {args.files} one-task DAGs, "
        f"parsing_processes={args.processes}",
        ["child private at exit, median", "child private at exit, max"],
        series,
        unit="MiB",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=24, help="one-task DAG files (24)")
    parser.add_argument("--seconds", type=float, default=30.0, help="per variant (30)")
    parser.add_argument("--processes", type=int, default=2, help="parsing_processes (2)")
    parser.add_argument("--interval", type=float, default=0.25, help="tree sampling period (s)")
    parser.add_argument(
        "--parse-seconds",
        type=float,
        default=0.0,
        help="each DAG file sleeps this long at import, like a slow-to-parse file (0)",
    )
    default = ["stock", "off", "freeze", "warmup"]
    if unsupported_reason() is None:  # the immortalization probe passes (CPython 3.12+)
        default += ["immortalize", "rehearse"]
    default.append("default")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=default)
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep logs and stats")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.keep:
            workdir = Path(args.keep)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fm-af-")))
        env = prepare(workdir / "home", args.files, args.processes, args.parse_seconds)
        results = []
        for name in args.variants:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results.append(run_variant(name, env, workdir, args.seconds, args.interval))
        report(results, args)
        chart(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
