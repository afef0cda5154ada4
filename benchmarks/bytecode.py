"""Benchmark: ``forkmem bytecode`` check vs a no-op ``python -m compileall -q``, and the check of
every loaded module in a process with >= 2,000 modules.

Run:  python benchmarks/bytecode.py [--copies N] [--modules N] [--repeat N] [--json]

1. Tree: a synthetic site-packages made of N copies of the standard library's ``.py`` files
   (>= 5,000 files), fully compiled, so ``compileall`` has nothing to do: both tools only look
   at every file and its pyc. Side by side, as fresh processes (what a Dockerfile ``RUN`` or a
   CI step pays) and in-process (``compileall.compile_dir`` vs ``forkmem.check_bytecode``).
   The fresh forkmem process runs as ``python -m forkmem`` and as the installed ``forkmem``
   script would (whose wrapper imports ``re`` first).
2. Loaded modules: a child process imports 2,000 generated modules plus the standard library
   and times ``forkmem.check_bytecode()`` (no argument: every module in ``sys.modules``),
   next to the floor of the same system calls done in a bare loop.
3. Cost: what compiling 500 of the tree's files costs a new process, vs loading their pycs
   (``forkmem bytecode --cost``).

Everything lives in a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

from _chart import bar_chart

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
sys.path.insert(0, str(SRC))


LIB: Path | None = None  # a compiled copy of forkmem, so its own import does not compile


def _env() -> dict[str, str]:
    env = dict(os.environ)
    extra = [str(LIB or SRC)]
    env["PYTHONPATH"] = os.pathsep.join(
        [*extra, *filter(None, env.get("PYTHONPATH", "").split(":"))]
    )
    env.pop("PYTHONPYCACHEPREFIX", None)
    return env


def install_forkmem(root: Path) -> None:
    """Copy forkmem's source next to the tree and compile it (as an installed wheel would be)."""
    global LIB
    LIB = root / "lib"
    shutil.copytree(SRC / "forkmem", LIB / "forkmem", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(LIB)], check=True)


def build_tree(root: Path, copies: int) -> int:
    """Copy the stdlib's .py files ``copies`` times under root; compile; drop what cannot."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}
    for i in range(copies):
        dest = root / f"copy{i}"
        for dirpath, dirnames, filenames in os.walk(stdlib):
            dirnames[:] = [d for d in dirnames if d not in skip and not d.startswith(".")]
            rel = Path(dirpath).relative_to(stdlib)
            for name in filenames:
                if name.endswith(".py"):
                    (dest / rel).mkdir(parents=True, exist_ok=True)
                    shutil.copy2(Path(dirpath) / name, dest / rel / name)
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", "-j", "0", str(root)],
        capture_output=True,
        check=False,
        env=_env(),
    )
    from forkmem.bytecode import check_bytecode

    # Sources that do not compile (templates, other Pythons' syntax) would make compileall
    # retry them on every run: not a no-op. Remove them so both tools see a clean tree.
    for f in check_bytecode(paths=[root]).uncached:
        if f.source:
            os.unlink(f.source)
    report = check_bytecode(paths=[root])
    assert report.ok, report.summary()
    return len(report.files)


# What the console script pip generates for `forkmem = "forkmem.cli:main"` does.
_SCRIPT = (
    "import re, sys; from forkmem.cli import main; "
    "sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0]); sys.exit(main())"
)


def timed_runs(
    cmds: dict[str, list[str]], repeat: int
) -> dict[str, tuple[list[float], list[float]]]:
    """Wall and CPU seconds (user + sys of the child) of each run of each command.

    The commands take turns (a, b, a, b, ...), so a burst of load on the shared machine hits
    both alike; one warm-up round first (page cache).
    """
    import resource

    runs: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in cmds}
    for i in range(repeat + 1):
        for key, cmd in cmds.items():
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, env=_env(), check=False)
            wall = time.perf_counter() - t0
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                raise SystemExit(f"{cmd} exited {proc.returncode}: {proc.stderr.decode()[-500:]}")
            if i:
                runs[key][0].append(wall)
                runs[key][1].append(r1.ru_utime - r0.ru_utime + r1.ru_stime - r0.ru_stime)
    return runs


def timed_calls(fn: object, repeat: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds (user + sys of this process) of each call, after one warm-up."""
    walls, cpus = [], []
    for i in range(repeat + 1):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()  # type: ignore[operator]
        if i:
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    return walls, cpus


_MODULES_CHILD = r"""
import importlib, json, os, sys, time
sys.path.insert(0, sys.argv[1])
n = int(sys.argv[2]); repeat = int(sys.argv[3])
for i in range(n):
    importlib.import_module(f"fmbench.m{i}")
for name in sys.stdlib_module_names:
    if name in ("antigravity", "this", "idlelib", "turtledemo", "tkinter", "turtle", "__hello__",
                "__phello__", "_tkinter", "pydoc", "xxlimited", "xxlimited_35", "_xxtestfuzz"):
        continue
    try:
        importlib.import_module(name)
    except Exception:
        pass
import importlib.util
from forkmem.bytecode import check_bytecode
report = check_bytecode()
times, cpus = [], []
for _ in range(repeat):
    c0, t0 = time.process_time(), time.perf_counter()
    report = check_bytecode()
    times.append(time.perf_counter() - t0)
    cpus.append(time.process_time() - c0)
# The floor: the same system calls (stat the source, read 16 bytes of its pyc) in a bare loop.
pairs = [(f.source, f.cache) for f in report.files if f.source]
floor, floor_cpu = [], []
for _ in range(repeat):
    c0, t0 = time.process_time(), time.perf_counter()
    for src, pyc in pairs:
        os.stat(src)
        try:
            fd = os.open(pyc, os.O_RDONLY)
            os.read(fd, 16)
            os.close(fd)
        except OSError:
            pass
    floor.append(time.perf_counter() - t0)
    floor_cpu.append(time.process_time() - c0)
print(json.dumps({"modules": len(sys.modules), "files": len(report.files),
                  "counts": dict(report.counts), "times": times, "cpu": cpus,
                  "floor": floor, "floor_cpu": floor_cpu}))
"""


def bench_modules(root: Path, n: int, repeat: int) -> dict[str, Any]:
    pkg = root / "fmbench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for i in range(n):
        (pkg / f"m{i}.py").write_text(f"VALUE = {i}\n\ndef f(x):\n    return x + VALUE\n")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(pkg)], check=True, env=_env())
    proc = subprocess.run(
        [sys.executable, "-c", _MODULES_CHILD, str(root), str(n), str(repeat)],
        capture_output=True,
        text=True,
        env=_env(),
        check=True,
        timeout=600,
    )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def bench_cost(root: Path, files: int) -> dict[str, Any]:
    from forkmem._bytecode_cost import measure_compile_cost

    sources = sorted(str(p) for p in root.rglob("*.py"))[:files]
    return measure_compile_cost(sources).as_dict()


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def ratio(base: list[float], ours: list[float]) -> str:
    return f"{statistics.median(base) / statistics.median(ours):.2f}x"


def spread(values: list[float]) -> str:
    """The middle half of the runs (first to third quartile), in ms."""
    if len(values) < 2:
        return ""
    q1, _, q3 = statistics.quantiles(values)
    return f"{q1 * 1000:.0f}-{q3 * 1000:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--copies", type=int, default=8, help="stdlib copies (default 8)")
    parser.add_argument("--modules", type=int, default=2000, help="generated modules (2000)")
    parser.add_argument("--repeat", type=int, default=21, help="runs per measurement (21)")
    parser.add_argument("--cost-files", type=int, default=500, help="files for --cost (500)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="forkmem-bench-bytecode-") as tmp:
        root = Path(tmp)
        install_forkmem(root)
        tree = root / "site-packages"
        files = build_tree(tree, args.copies)
        from forkmem.bytecode import check_bytecode

        py = sys.executable
        runs = timed_runs(
            {
                "compileall": [py, "-m", "compileall", "-q", str(tree)],
                "forkmem": [py, "-m", "forkmem", "bytecode", str(tree)],
                # What the installed `forkmem` script runs: the wrapper pip writes imports re
                # (for sys.argv[0]) before forkmem's main().
                "script": [py, "-c", _SCRIPT, "bytecode", str(tree)],
                "bare": [py, "-c", "pass"],
                "help": [py, "-m", "forkmem", "bytecode", "--help"],
            },
            args.repeat,
        )
        ca_cli, fm_cli, fm_script, bare, cli_import = (
            runs[k] for k in ("compileall", "forkmem", "script", "bare", "help")
        )
        import compileall

        ca_lib = timed_calls(lambda: compileall.compile_dir(str(tree), quiet=1), args.repeat)
        fm_lib = timed_calls(lambda: check_bytecode(paths=[tree]), args.repeat)
        mods = bench_modules(root / "mods", args.modules, args.repeat)
        cost = bench_cost(tree, args.cost_files)

    figures = {
        "python": sys.version.split()[0],
        "tree_files": files,
        "compileall_cli": {"wall_s": ca_cli[0], "cpu_s": ca_cli[1]},
        "forkmem_cli": {"wall_s": fm_cli[0], "cpu_s": fm_cli[1]},
        "forkmem_script": {"wall_s": fm_script[0], "cpu_s": fm_script[1]},
        "compileall_lib": {"wall_s": ca_lib[0], "cpu_s": ca_lib[1]},
        "forkmem_lib": {"wall_s": fm_lib[0], "cpu_s": fm_lib[1]},
        "python_startup": {"wall_s": bare[0], "cpu_s": bare[1]},
        "forkmem_cli_startup": {"wall_s": cli_import[0], "cpu_s": cli_import[1]},
        "loaded_modules": mods,
        "cost": cost,
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(
        f"Python {figures['python']}: tree of {files} .py files, all compiled; "
        f"median of {args.repeat} runs (fresh processes: taking turns)"
    )
    head = f"{'':44}{'compileall':>12}{'forkmem':>12}{'ratio':>8}   middle half (ms)"
    print(head)
    rows = [
        ("fresh process, wall (compileall -q / CLI)", ca_cli[0], fm_cli[0]),
        ("fresh process, CPU user+sys", ca_cli[1], fm_cli[1]),
        ("in process, wall (compile_dir / check)", ca_lib[0], fm_lib[0]),
        ("in process, CPU", ca_lib[1], fm_lib[1]),
    ]
    script_rows = [
        ("  as the installed script, wall", ca_cli[0], fm_script[0]),
        ("  as the installed script, CPU", ca_cli[1], fm_script[1]),
    ]
    for label, base, ours in rows[:2] + script_rows + rows[2:]:
        print(
            f"{label:44}{ms(base):>12}{ms(ours):>12}{ratio(base, ours):>8}"
            f"   {spread(base)} / {spread(ours)}"
        )
    bar_chart(
        "bytecode",
        f"Checking the bytecode cache of {files} files: compileall vs forkmem (lower is better)",
        ["fresh process, wall", "fresh process, CPU", "in process, wall", "in process, CPU"],
        {
            "compileall": [statistics.median(r[1]) * 1000 for r in rows],
            "forkmem": [statistics.median(r[2]) * 1000 for r in rows],
        },
        unit="ms",
    )
    print(
        f"  fresh-process start-up alone: python -c pass CPU {ms(bare[1])}; "
        f"forkmem bytecode --help CPU {ms(cli_import[1])} (import forkmem + CLI parser)"
    )
    print(
        f"\ncheck_bytecode() of every loaded module: {mods['modules']} modules, "
        f"{mods['files']} source files (budget 50 ms)"
        f"\n  check:                                   wall {ms(mods['times'])}, "
        f"CPU {ms(mods['cpu'])}"
        f"\n  same system calls in a bare loop (floor): wall {ms(mods['floor'])}, "
        f"CPU {ms(mods['floor_cpu'])}"
    )
    c = cost
    print(
        f"\ncost of {c['files']} uncached files ({c['source_bytes'] / 2**20:.1f} MiB) "
        "in a new process:"
        f"\n  compiled from source: {c['compile_cpu_s']:.3f} s CPU, "
        f"+{c['compile_private_bytes'] / 2**20:.1f} MiB private"
        f"\n  loaded from pycs:     {c['load_cpu_s']:.3f} s CPU, "
        f"+{c['load_private_bytes'] / 2**20:.1f} MiB private"
        f"\n  ratio: {c['compile_cpu_s'] / max(c['load_cpu_s'], 1e-9):.0f}x CPU"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
