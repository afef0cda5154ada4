"""Writing pycs for `forkmem.compile_bytecode()`: built in process or in fresh interpreters.

The bytes are built by `forkmem._pycbuild` (here, or in ``sys.executable -I`` worker
subprocesses fed a JSON job list: no fork, so nothing in this process matters) and always
written here, by `forkmem._confine`: atomically (temporary file + ``os.replace``), and only
inside the tree being fixed, never through a symlink that leaves it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forkmem import _confine, _pycbuild
from forkmem._bytecode_types import CompileFailure, CompileResult

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__: list[str] = []

MODES = _pycbuild.MODES


@dataclass(frozen=True, slots=True)
class Job:
    source: str
    cache: str
    optimization: int
    mode: str | None
    root: str
    """The resolved tree the pyc must land in."""


def default_mode() -> str:
    # Same rule as py_compile: reproducible builds (SOURCE_DATE_EPOCH) get checked-hash pycs.
    return "checked-hash" if os.environ.get("SOURCE_DATE_EPOCH") else "timestamp"


# Bounds a wedged worker (a source on a hung network file system, say); compiling a whole
# site-packages takes seconds.
_WORKER_TIMEOUT = 600.0


def _run_worker(chunk: list[list[Any]]) -> list[list[Any]]:
    import json
    import marshal
    import subprocess
    import sys

    try:
        proc = subprocess.run(
            [sys.executable, "-I", _pycbuild.__file__],
            input=json.dumps(chunk).encode(),
            capture_output=True,
            check=False,
            timeout=_WORKER_TIMEOUT,
        )
    except OSError as exc:  # sys.executable missing or empty (an embedding application)
        error = f"cannot start a compile worker: {exc}"
    except subprocess.TimeoutExpired:  # run() has killed it; its files count as failed
        error = f"the compile worker took longer than {_WORKER_TIMEOUT:.0f} s"
    else:
        if proc.returncode == 0:
            result: list[list[Any]] = marshal.loads(proc.stdout)
            return result
        err = (proc.stderr.decode(errors="replace").strip().splitlines() or ["worker failed"])[-1]
        error = f"compile worker exited {proc.returncode}: {err}"
    return [[src, None, error, False, 0] for src, *_ in chunk]


def _write(job: Job, row: list[Any]) -> CompileFailure | None:
    _src, data, error, syntax, st_mode = row
    if data is None:
        return CompileFailure(job.source, job.cache, error, bool(syntax))
    try:
        # The importer's rule for a pyc's permissions: the source's, plus owner-write.
        _confine.write(job.root, job.cache, data, st_mode | 0o200)
    except OSError as exc:
        return CompileFailure(job.source, job.cache, exc.strerror or str(exc), False)
    return None


def run(jobs: Sequence[Job], *, workers: int) -> CompileResult:
    default = default_mode()
    raw: list[list[Any]] = [[j.source, j.optimization, j.mode or default] for j in jobs]
    if workers == 0 or len(raw) <= 1:
        rows: list[list[Any]] = [
            _pycbuild.build_row(j.source, j.optimization, j.mode or default) for j in jobs
        ]
    else:
        from concurrent.futures import ThreadPoolExecutor

        n = min(workers, len(raw))
        order = [list(range(i, len(raw), n)) for i in range(n)]
        # Threads only wait on the subprocesses; the compiling happens in them.
        with ThreadPoolExecutor(max_workers=n) as pool:
            parts = list(pool.map(_run_worker, [[raw[k] for k in ks] for ks in order]))
        rows = [[] for _ in raw]
        for ks, part in zip(order, parts, strict=True):
            for k, row in zip(ks, part, strict=True):
                rows[k] = row
    written: list[str] = []
    failed: list[CompileFailure] = []
    for job, row in zip(jobs, rows, strict=True):
        failure = _write(job, row)
        if failure is None:
            written.append(job.cache)
        else:
            failed.append(failure)
    return CompileResult(written=tuple(written), failed=tuple(failed))
