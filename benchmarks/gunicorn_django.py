"""Stock gunicorn against forkmem's hooks on a real Django site (or a real Flask site), in one run.

Needs the ``examples`` extra (``pip install -e '.[examples]'``: gunicorn, Django, Flask with
Flask-SQLAlchemy and Flask-WTF) and ``wrk`` (Debian: ``apt-get install wrk``). For each variant
it starts ``gunicorn --preload`` with ``--workers`` sync workers on 127.0.0.1, loads it with
wrk for ``--seconds`` over the site's pages (and on, in 2 s runs, until the workers have served
``--min-requests`` in all: 16000 by default, so that a busy machine does not measure workers
that served less, and a stock worker on CPython 3.13+ has had its first full collection), then
measures every worker from outside (``forkmem.memory``) and the whole tree
(``forkmem.memory_tree``). A refork variant is first loaded in 2 s runs until the mold has
replaced every worker (failed requests while reforking count), so that its measured load, like
every other variant's, runs on the final workers:

- ``stock``: no forkmem at all (an empty gunicorn config).
- ``freeze``: ``configure(warmup=False)``: collect and ``gc.freeze()`` in the master.
- ``immortalize``: ``configure(warmup=True, immortalize=True)`` (CPython 3.12/3.13).
- ``default``: forkmem's one-line config as shipped (the import, nothing else).
- ``rehearse-once``: the default plus ``rehearse=[the pages]`` served once in the master.
- ``rehearse-unpacked``: 32 rounds of the pages, with ``pack_code=False`` (the code objects stay
  where the imports put them).
- ``rehearse``: the same with the defaults: 32 rounds, the code the pages run packed together.
- ``rehearse-thread``: ``rehearse`` with the memory sampler in a thread (``sampler="thread"``, as
  before 2026-12-02) instead of from ``post_request``: its stack and malloc arena are private
  to each worker.
- ``rehearse-quiet``: ``rehearse`` without the per-worker memory sampler at all.
- ``refork``: the default plus ``refork_after=N``: a worker warmed by real traffic forks the rest.
- ``rehearse-refork``: ``rehearse`` and ``refork_after=N`` together.
- ``refork-lazy``: ``refork`` without ``--preload``: the master never imports the app, so the
  mold's heap is the only copy of it (with ``--preload`` the master keeps the original of every
  page the mold wrote, private to the master once its own workers are gone).

Printed per variant: worker private memory (USS) median and max, tree PSS, requests/s and failed
requests (non-2xx/3xx answers and socket errors, from wrk), with ratios against ``stock``; then
where the tree PSS is: the master's, the mold's (refork) and the workers' PSS, and the master's
and mold's USS.

    python benchmarks/gunicorn_django.py [--app django|flask] [--seconds 10] [--variants ...]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
from _chart import bar_chart
from _procs import stop

import forkmem

MiB = 1024 * 1024
CHUNK = 2  # seconds per extra load: while a mold replaces the workers, or to --min-requests
REFORK_TIMEOUT = 120.0
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

APPS = {
    "django": ("django_site:application", ["/", "/admin/login/"]),
    "flask": ("flask_site:app", ["/", "/posts/post-3", "/tags/python", "/api/posts"]),
}

VARIANTS: dict[str, str | None] = {
    "stock": None,
    "freeze": "configure(warmup=False)",
    "immortalize": "configure(warmup=True, immortalize=True)",
    "default": "",
    "rehearse-once": "configure(rehearse={paths!r}, rehearse_rounds=1)",
    "rehearse-unpacked": "configure(rehearse={paths!r}, pack_code=False)",
    "rehearse": "configure(rehearse={paths!r})",
    "rehearse-thread": "configure(rehearse={paths!r}, sampler='thread')",
    "rehearse-quiet": "configure(rehearse={paths!r}, sample_memory=False)",
    "refork": "configure(refork_after={refork_after})",
    "rehearse-refork": "configure(rehearse={paths!r}, refork_after={refork_after})",
    "refork-lazy": "configure(refork_after={refork_after})",
}
# Variants whose master does not preload the app: the mold is the first process that imports it.
LAZY = {"refork-lazy"}

WRK_SCRIPT = """\
local paths = {{{paths}}}
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", paths[(i % #paths) + 1])
end
"""


@dataclass
class Result:
    name: str
    worker_uss: list[int]
    tree_pss: int
    rps: float
    requests: int
    failed: int
    # role -> (PSS, USS) summed over its processes: "master", "mold", "workers"
    roles: dict[str, tuple[int, int]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(folder: Path, name: str, paths: list[str], refork_after: int) -> Path:
    conf = folder / f"{name}.conf.py"
    template = VARIANTS[name]
    if template is None:
        conf.write_text("")
        return conf
    call = template.format(paths=paths, refork_after=refork_after)
    lines = ["from forkmem.integrations.gunicorn import *  # noqa: F403"]
    if call:
        lines.insert(0, "import forkmem.integrations.gunicorn as forkmem_gunicorn")
        lines.append(f"forkmem_gunicorn.{call}")
    conf.write_text("\n".join(lines) + "\n")
    return conf


def wait_up(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(base + "/", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gunicorn did not come up:\n{log.read_text()}") from None
            time.sleep(0.2)


def parse_wrk(text: str) -> tuple[float, int, int]:
    """requests/s, requests, failed (non-2xx/3xx answers plus socket errors) from wrk's output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", text).group(1))  # type: ignore[union-attr]
    failed = 0
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if bad:
        failed += int(bad.group(1))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if errors:
        failed += sum(int(g) for g in errors.groups())
    return rps, requests, failed


def workers_of(master: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(master).children()]
    except psutil.Error:
        return []


def run_variant(name: str, args: argparse.Namespace, folder: Path, env: dict[str, str]) -> Result:
    target, paths = APPS[args.app]
    conf = write_config(folder, name, paths, args.refork_after)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = folder / f"{name}.log"
    command = [
        sys.executable, "-m", "gunicorn", "-c", str(conf), "--preload",
        "--workers", str(args.workers), "--worker-class", "sync",
        "--bind", f"127.0.0.1:{port}", "--chdir", str(EXAMPLES), target,
    ]  # fmt: skip
    if name in LAZY:
        command.remove("--preload")
    if args.max_requests:
        command[-1:-1] = ["--max-requests", str(args.max_requests)]
    script = folder / "paths.lua"
    script.write_text(WRK_SCRIPT.format(paths=", ".join(f'"{p}"' for p in paths)))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_up(base, proc, log)
        failed = refork_under_load(base, script, proc.pid, log, args) if "refork" in name else 0
        # The measured load runs on the final workers in every variant, so that each worker
        # measured has served the same load (a worker's private memory grows with its requests).
        rps, requests, main_failed = load(base, script, args.connections, args.seconds)
        failed += main_failed
        # A worker's private memory depends on how much it served (stock's first full
        # collection comes after hundreds to thousands of requests): top the load up to
        # --min-requests so that every variant's workers served as much, however busy the machine.
        while requests < args.min_requests:
            more, more_failed = load(base, script, args.connections, CHUNK)[1:]
            requests, failed = requests + more, failed + more_failed
        time.sleep(2.0)  # let the last answers finish
        # A mold (refork) forks workers and serves nothing: the tree counts it, the workers don't.
        molds = set(re.findall(r"worker pid (\d+) is the mold now", log.read_text()))
        roles = {"master": [proc.pid], "mold": [], "workers": []}
        for pid in workers_of(proc.pid):
            roles["mold" if str(pid) in molds else "workers"].append(pid)
        usage = {role: [measure(pid) for pid in pids] for role, pids in roles.items()}
        tree = forkmem.memory_tree(proc.pid).total_pss or 0
    finally:
        stop(proc)
    uss = [m.uss for m in usage["workers"] if m is not None]
    totals = {
        role: (sum(m.pss or 0 for m in found if m), sum(m.uss for m in found if m))
        for role, found in usage.items()
    }
    return Result(name, uss, tree, rps, requests, failed, totals)


def load(base: str, script: Path, connections: int, seconds: int) -> tuple[float, int, int]:
    """wrk over the pages: requests/s, requests, failed."""
    wrk = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "-s", str(script), base],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )  # fmt: skip
    return parse_wrk(wrk.stdout)


def reforked(master: int, log: Path, workers: int) -> bool:
    """Whether the mold has replaced every worker the master forked."""
    text = log.read_text()
    molds = set(re.findall(r"worker pid (\d+) is the mold now", text))
    forked = set(re.findall(r"Booting worker with pid: (\d+) \(forked by the mold\)", text))
    children = {str(pid) for pid in workers_of(master)} - molds
    return bool(molds) and len(children) == workers and children <= forked


def refork_under_load(
    base: str, script: Path, master: int, log: Path, args: argparse.Namespace
) -> int:
    """Load the server in short runs until the mold has replaced every worker: the refork
    happens under load (its failed requests count), and the measured load that follows runs
    on the reforked tree. Returns the failed requests."""
    failed = 0
    deadline = time.monotonic() + REFORK_TIMEOUT
    while not reforked(master, log, args.workers):
        if time.monotonic() > deadline:
            print("# the refork did not finish: some workers are the master's own", flush=True)
            break
        failed += load(base, script, args.connections, CHUNK)[2]
    return failed


def measure(pid: int) -> forkmem.MemoryUsage | None:
    try:
        return forkmem.memory(pid)
    except forkmem.NoSuchProcess:
        return None


def ratio(value: float, base: float) -> str:
    return f"{value / base:5.2f}x" if base else "   - "


def report(results: list[Result]) -> None:
    stock = next((r for r in results if r.name == "stock"), results[0])
    stock_uss = statistics.median(stock.worker_uss) if stock.worker_uss else 0
    print(
        f"{'variant':<16} {'worker USS med':>14} {'max':>8} {'tree PSS':>10} "
        f"{'req/s':>9} {'failed':>7}   vs {stock.name}: USS   PSS   req/s"
    )
    for r in results:
        med = statistics.median(r.worker_uss) if r.worker_uss else 0
        top = max(r.worker_uss, default=0)
        ratios = (ratio(med, stock_uss), ratio(r.tree_pss, stock.tree_pss), ratio(r.rps, stock.rps))
        print(
            f"{r.name:<16} {med / MiB:11.1f} MiB {top / MiB:5.1f} MiB {r.tree_pss / MiB:6.1f} MiB "
            f"{r.rps:9.0f} {r.failed:7d}   {' '.join(ratios)}"
        )
    print(
        f"\nwhere the tree PSS is (MiB)\n{'variant':<16} {'master PSS':>10} {'mold PSS':>9} "
        f"{'workers PSS':>11}   {'master USS':>10} {'mold USS':>9}"
    )
    for r in results:
        (m_pss, m_uss), (o_pss, o_uss), (w_pss, _) = (
            r.roles[k] for k in ("master", "mold", "workers")
        )
        print(
            f"{r.name:<16} {m_pss / MiB:10.1f} {o_pss / MiB:9.1f} {w_pss / MiB:11.1f}   "
            f"{m_uss / MiB:10.1f} {o_uss / MiB:9.1f}"
        )


def chart(results: list[Result], args: argparse.Namespace) -> None:
    """Worker USS and tree PSS, one bar per variant: stock in grey, forkmem's in colour."""
    labels = {
        "stock": "stock (no forkmem)",
        "default": "default (the one-line import)",
        "refork": f"refork_after={args.refork_after}",
        "refork-lazy": f"refork_after={args.refork_after}, no --preload",
    }
    series = {
        labels.get(r.name, r.name): [
            (statistics.median(r.worker_uss) if r.worker_uss else 0) / MiB,
            r.tree_pss / MiB,
        ]
        for r in results
    }
    bar_chart(
        f"gunicorn_{args.app}",
        f"{args.app.capitalize()} under gunicorn --preload, {args.workers} sync workers, after "
        f"{args.seconds} s of wrk",
        ["worker USS, median", "tree PSS (master + workers)"],
        series,
        unit="MiB",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--app", choices=sorted(APPS), default="django")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--refork-after", type=int, default=200)
    parser.add_argument("--max-requests", type=int, default=0)
    # 16000 (4000 a worker): on CPython 3.13+ (collector threshold 2000) a stock worker's first
    # full collection, which copies most of its heap, comes only after 1000-5000 requests.
    parser.add_argument("--min-requests", type=int, default=16000)
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        default=list(VARIANTS),
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="forkmem-gunicorn-bench-") as tmp:
        folder = Path(tmp)
        env = dict(os.environ, XDG_RUNTIME_DIR=tmp, FORKMEM_DJANGO_DB=str(folder / "db.sqlite3"))
        env.pop("FORKMEM_DISABLE", None)
        if args.app == "django":
            subprocess.run(
                [sys.executable, str(EXAMPLES / "django_site.py"), "migrate"], env=env, check=True
            )
        results = []
        for name in args.variants:
            result = run_variant(name, args, folder, env)
            results.append(result)
            print(
                f"# {name}: {len(result.worker_uss)} workers, {result.requests} requests",
                flush=True,
            )
        print(
            f"\n{args.app} under gunicorn {args.workers} sync workers --preload, wrk "
            f"{args.connections} connections {args.seconds} s, Python {sys.version.split()[0]}"
        )
        report(results)
        chart(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
