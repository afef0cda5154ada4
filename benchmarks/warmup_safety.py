"""Safety run for ``forkmem.warmup(immortalize=True)``: many forked children, mixed workload.

Each repeat starts a fresh parent interpreter that imports 100+ stdlib modules, builds some
state (classes, instances, weak references, a waiting thread), rehearses the children's
workload as the integrations do (once, once recorded, the code it ran packed together, twice
more), runs ``warmup(immortalize=True)`` (which fills the allocators' holes), then forks
``--forks`` children. Every child reads the parent's
objects and runs json, re, asyncio, threads, sqlite3, exceptions, weakrefs, new classes and
decimal, collects, and finishes through normal interpreter shutdown. The run passes when every
child and every parent exits 0 and nothing is printed on stderr (no "Fatal Python error", no
warning, no traceback).

    python benchmarks/warmup_safety.py    # 200 forks x 20 repeats, plain and -X dev
    python benchmarks/warmup_safety.py --forks 20 --repeats 2 --python /path/to/python3.13

Exit status 0 when every run passed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time

_MODULE_NAMES = """
abc argparse array ast asyncio base64 bdb binascii bisect bz2 calendar cmath cmd code codecs
codeop collections colorsys concurrent.futures configparser contextlib contextvars copy copyreg
csv ctypes dataclasses datetime decimal difflib dis doctest email email.mime.text enum errno
faulthandler filecmp fileinput fnmatch fractions ftplib functools getopt getpass gettext glob
graphlib gzip hashlib heapq hmac html html.parser http http.client http.cookies http.server
imaplib importlib importlib.metadata importlib.resources inspect io ipaddress itertools json
keyword linecache locale logging logging.handlers lzma mailbox marshal math mimetypes mmap
modulefinder multiprocessing netrc numbers opcode operator optparse pathlib pdb pickle
pickletools pkgutil platform plistlib poplib pprint cProfile pstats queue quopri random re reprlib
rlcompleter runpy sched secrets select selectors shelve shlex shutil signal smtplib socket
socketserver sqlite3 ssl stat statistics string stringprep struct subprocess symtable sysconfig
tabnanny tarfile tempfile textwrap threading timeit token tokenize trace traceback tracemalloc
types typing unicodedata unittest unittest.mock urllib.parse urllib.request uuid warnings wave
weakref xml.dom.minidom xml.etree.ElementTree xml.sax xmlrpc.client zipapp zipfile zipimport zlib
zoneinfo
"""
MODULES = _MODULE_NAMES.split()


# ----------------------------------------------------------------------------------------- parent
def _import_stdlib() -> int:
    import importlib

    imported = 0
    for name in MODULES:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional extension (e.g. _ssl) missing from this build
            continue
        imported += 1
    return imported


class Base:
    """A parent class children subclass and instantiate."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.label = f"item-{n}"

    def double(self) -> int:
        return self.n * 2


class Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a: int, b: str) -> None:
        self.a = a
        self.b = b


def _build_state() -> dict[str, object]:
    import threading
    import weakref

    items = [Base(i) for i in range(3000)]
    slotted = [Slotted(i, str(i)) for i in range(3000)]
    cache: weakref.WeakValueDictionary[int, Base] = weakref.WeakValueDictionary()
    for item in items[:100]:
        cache[item.n] = item
    stop = threading.Event()
    waiter = threading.Thread(target=stop.wait, args=(60,), daemon=True)
    waiter.start()
    config = {
        f"key{i}": {"value": i, "name": f"name{i}", "tags": [f"t{i}", f"u{i}"]} for i in range(5000)
    }
    return {
        "items": items,
        "slotted": slotted,
        "cache": cache,
        "stop": stop,
        "waiter": waiter,
        "config": config,
    }


def _workload(state: dict[str, object]) -> None:
    """What every child (and the parent afterwards) runs; raises on a wrong result."""
    import asyncio
    import decimal
    import gc
    import json
    import re
    import sqlite3
    import threading
    import traceback
    import weakref

    # Read everything the parent built.
    config = state["config"]
    assert isinstance(config, dict)
    total = sum(len(k) + v["value"] + len(v["name"]) + len(v["tags"]) for k, v in config.items())
    assert total > 0
    items = state["items"]
    assert isinstance(items, list)
    assert sum(item.double() for item in items) == 2 * sum(range(len(items)))
    for module in list(sys.modules.values()):
        getattr(module, "__name__", None)

    text = json.dumps(config)
    assert json.loads(text) == config

    pattern = re.compile(r"(?P<word>[a-z]+)(?P<num>\d+)")
    assert [m.group("num") for m in pattern.finditer("ab1 cd22 ef333")] == ["1", "22", "333"]
    assert re.sub(r"\s+", "-", "a  b   c") == "a-b-c"

    async def fetch(i: int) -> int:
        await asyncio.sleep(0)
        return i * i

    async def gather() -> list[int]:
        # -X dev turns on asyncio debug; on a busy machine it would log "slow" steps.
        asyncio.get_running_loop().slow_callback_duration = 60.0
        return list(await asyncio.gather(*(fetch(i) for i in range(20))))

    assert asyncio.run(gather()) == [i * i for i in range(20)]

    results: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        with lock:
            results.append(i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(results) == [0, 1, 2, 3]

    with sqlite3.connect(":memory:") as conn:
        conn.execute("create table t (k text, v integer)")
        conn.executemany("insert into t values (?, ?)", [(f"k{i}", i) for i in range(200)])
        assert conn.execute("select sum(v) from t").fetchone()[0] == sum(range(200))
    conn.close()

    caught: list[BaseException] = []
    try:
        {}["missing"]
    except KeyError as exc:
        caught.append(exc)
    try:
        raise ValueError("boom") from ZeroDivisionError()
    except ValueError as exc:
        caught.append(exc)
    assert "missing" in "".join(traceback.format_exception(caught[0]))
    assert isinstance(caught[1].__cause__, ZeroDivisionError)

    fired: list[int] = []
    obj = Base(-1)
    ref = weakref.ref(obj, lambda r: fired.append(1))
    weakref.finalize(obj, fired.append, 2)
    del obj
    gc.collect()
    assert ref() is None
    assert sorted(fired) == [1, 2], fired
    cache = state["cache"]
    assert isinstance(cache, weakref.WeakValueDictionary)
    assert len(cache) == 100

    class Child(Base):
        def double(self) -> int:
            return super().double() + 1

    made = type("Made", (Child,), {"extra": 1})
    assert made(3).double() == 7
    assert made.extra == 1
    assert issubclass(made, Base)

    ctx = decimal.Context(prec=30)
    value = ctx.divide(decimal.Decimal(1), decimal.Decimal(7))
    assert str(value).startswith("0.142857142857")
    assert decimal.Decimal("1.10") + decimal.Decimal("2.20") == decimal.Decimal("3.30")

    gc.collect()


def _rehearse(state: dict[str, object]) -> int:
    """Run the workload here first, as gunicorn's and Airflow's rehearsals do: the second run
    is recorded and the code it ran is packed (the integrations' default); returns how many
    code objects moved."""
    from forkmem._code_pack import CodeRecorder, pack

    _workload(state)
    with CodeRecorder() as recorder:
        _workload(state)
    packed = pack(recorder.codes.values()).codes
    del recorder
    _workload(state)
    _workload(state)
    return packed


def _reap(pids: dict[int, int], deadline: float) -> dict[int, int]:
    statuses: dict[int, int] = {}
    while pids and time.monotonic() < deadline:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            time.sleep(0.005)
            continue
        if pid in pids:
            statuses[pids.pop(pid)] = os.waitstatus_to_exitcode(status)
    for pid, index in pids.items():  # bounded wait: kill what is left
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        statuses[index] = -signal.SIGKILL
    return statuses


def parent_main(forks: int, parallel: int, immortalize: bool, timeout: float) -> int:
    import warnings

    import forkmem

    # The waiting thread is there on purpose (a parent with threads); 3.12+ warns on fork.
    warnings.filterwarnings("ignore", r"This process .* is multi-threaded", DeprecationWarning)
    modules = _import_stdlib()
    state = _build_state()
    packed = _rehearse(state)
    report = forkmem.warmup(immortalize=immortalize)
    sys.stdout.flush()
    sys.stderr.flush()
    deadline = time.monotonic() + timeout
    statuses: dict[int, int] = {}
    index = 0
    while index < forks:
        running: dict[int, int] = {}
        for _ in range(min(parallel, forks - index)):
            pid = os.fork()
            if pid == 0:
                try:
                    _workload(state)
                except BaseException:
                    import traceback

                    traceback.print_exc()
                    os._exit(3)
                # A normal exit: the child runs the full interpreter shutdown.
                raise SystemExit(0)
            running[pid] = index
            index += 1
        statuses.update(_reap(running, deadline))
    _workload(state)  # the parent still works after its children
    stop = state["stop"]
    stop.set()  # type: ignore[attr-defined]
    failed = {i: s for i, s in statuses.items() if s != 0}
    print(
        json.dumps(
            {
                "python": sys.version.split()[0],
                "dev_mode": sys.flags.dev_mode,
                "modules_imported": modules,
                "sys_modules": len(sys.modules),
                "forks": forks,
                "ok": forks - len(failed),
                "failed": failed,
                "code_packed": packed,
                "holes_filled": report.holes_filled,
                "immortalized": report.immortalized,
                "skipped": dict(report.skipped),
                "warmup_seconds": round(report.total_seconds, 3),
            }
        )
    )
    return 0 if not failed else 1


# ------------------------------------------------------------------------------------ orchestrator
def run_one(python: str, dev: bool, forks: int, parallel: int, timeout: float) -> dict[str, object]:
    """Run one parent in a fresh interpreter; returns its summary plus exit code and stderr."""
    cmd = [
        python,
        *(["-X", "dev"] if dev else []),
        os.path.abspath(__file__),
        "--parent",
        "--forks",
        str(forks),
        "--parallel",
        str(parallel),
        "--timeout",
        str(timeout),
    ]
    env = dict(os.environ)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    summary: dict[str, object] = json.loads(lines[-1]) if lines else {}
    summary["returncode"] = proc.returncode
    summary["stderr"] = proc.stderr
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forks", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=8, help="children alive at once")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per parent")
    parser.add_argument("--python", action="append", help="interpreter(s); default: this one")
    parser.add_argument("--no-dev", action="store_true", help="skip the -X dev runs")
    parser.add_argument("--parent", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mortal", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.parent:
        return parent_main(args.forks, args.parallel, not args.mortal, args.timeout)

    all_ok = True
    for python in args.python or [sys.executable]:
        for dev in (False,) if args.no_dev else (False, True):
            ok_runs = children = 0
            started = time.perf_counter()
            for _ in range(args.repeats):
                summary = run_one(python, dev, args.forks, args.parallel, args.timeout)
                good = summary["returncode"] == 0 and not summary["stderr"]
                ok_runs += good
                children += int(summary.get("ok", 0))  # type: ignore[call-overload]
                if not good:
                    all_ok = False
                    tail = str(summary["stderr"])[-3000:]
                    print(
                        f"FAILED: {python} dev={dev}: rc={summary['returncode']}\n{tail}",
                        file=sys.stderr,
                    )
            print(
                f"{python} {'-X dev' if dev else 'plain '}: parents ok {ok_runs}/{args.repeats}, "
                f"children exit 0 {children}/{args.forks * args.repeats}, "
                f"{time.perf_counter() - started:.0f} s"
            )
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
