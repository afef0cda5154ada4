"""Writing pycs for `forkmem.compile_bytecode()`: in process, or in fresh interpreters.

py_compile writes atomically (temporary file + ``os.replace``) and creates the cache
directory, so a reader never sees half a pyc. Workers are ``sys.executable -I`` subprocesses
fed a JSON job list on stdin: no fork, so nothing in this process (locks, threads) matters.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forkmem._bytecode_types import CompileFailure, CompileResult

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__: list[str] = []

MODES = ("timestamp", "checked-hash", "unchecked-hash")
_ENUM = {
    "timestamp": "TIMESTAMP",
    "checked-hash": "CHECKED_HASH",
    "unchecked-hash": "UNCHECKED_HASH",
}


@dataclass(frozen=True, slots=True)
class Job:
    source: str
    cache: str
    optimization: int
    mode: str | None


def default_mode() -> str:
    # Same rule as py_compile: reproducible builds (SOURCE_DATE_EPOCH) get checked-hash pycs.
    return "checked-hash" if os.environ.get("SOURCE_DATE_EPOCH") else "timestamp"


# Runs in a fresh interpreter; only the standard library, never the files it compiles.
_WORKER = r"""
import json, sys, warnings, py_compile
warnings.simplefilter("ignore")
out = []
for src, cfile, opt, mode in json.load(sys.stdin):
    try:
        py_compile.compile(src, cfile=cfile, doraise=True, optimize=opt,
                           invalidation_mode=py_compile.PycInvalidationMode[mode])
        out.append([src, cfile, None, False])
    except py_compile.PyCompileError as exc:
        out.append([src, cfile, exc.msg, True])
    except (OSError, ValueError) as exc:
        out.append([src, cfile, str(exc), False])
json.dump(out, sys.stdout)
"""


def _compile_one(job: list[Any]) -> list[Any]:
    import py_compile
    import warnings

    src, cfile, opt, mode = job
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarnings belong to the package's authors
            py_compile.compile(
                src,
                cfile=cfile,
                doraise=True,
                optimize=opt,
                invalidation_mode=py_compile.PycInvalidationMode[mode],
            )
    except py_compile.PyCompileError as exc:
        return [src, cfile, exc.msg, True]
    except (OSError, ValueError) as exc:
        return [src, cfile, str(exc), False]
    return [src, cfile, None, False]


# Bounds a wedged worker (a source on a hung network file system, say); compiling a whole
# site-packages takes seconds.
_WORKER_TIMEOUT = 600.0


def _run_worker(chunk: list[list[Any]]) -> list[list[Any]]:
    import json
    import subprocess
    import sys

    try:
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _WORKER],
            input=json.dumps(chunk),
            capture_output=True,
            text=True,
            check=False,
            timeout=_WORKER_TIMEOUT,
        )
    except OSError as exc:  # sys.executable missing or empty (an embedding application)
        error = f"cannot start a compile worker: {exc}"
    except subprocess.TimeoutExpired:  # run() has killed it; its files count as failed
        error = f"the compile worker took longer than {_WORKER_TIMEOUT:.0f} s"
    else:
        if proc.returncode == 0:
            result: list[list[Any]] = json.loads(proc.stdout)
            return result
        err = (proc.stderr.strip().splitlines() or ["worker failed"])[-1]
        error = f"compile worker exited {proc.returncode}: {err}"
    return [[src, cfile, error, False] for src, cfile, *_ in chunk]


def run(jobs: Sequence[Job], *, workers: int) -> CompileResult:
    default = default_mode()
    raw = [[j.source, j.cache, j.optimization, _ENUM[j.mode or default]] for j in jobs]
    if workers == 0 or len(raw) <= 1:
        rows = [_compile_one(job) for job in raw]
    else:
        from concurrent.futures import ThreadPoolExecutor

        n = min(workers, len(raw))
        chunks = [raw[i::n] for i in range(n)]
        # Threads only wait on the subprocesses; the compiling happens in them.
        with ThreadPoolExecutor(max_workers=n) as pool:
            rows = [row for part in pool.map(_run_worker, chunks) for row in part]
    written = tuple(cfile for _src, cfile, err, _syn in rows if err is None)
    failed = tuple(
        CompileFailure(src, cfile, err, bool(syn))
        for src, cfile, err, syn in rows
        if err is not None
    )
    return CompileResult(written=written, failed=failed)
