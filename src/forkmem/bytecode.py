"""Bytecode-cache check: which modules must every new process compile from source?

A missing or stale ``.pyc`` costs every new interpreter (and every forked child that imports
late) CPU time and private, never-shared memory for compiling; where ``__pycache__`` cannot be
written the importer retries the write on every start. [`check_bytecode()`][forkmem.check_bytecode]
finds those files without importing or executing anything,
[`compile_bytecode()`][forkmem.compile_bytecode] fixes them on request and
[`warn_if_missing_bytecode()`][forkmem.warn_if_missing_bytecode] logs one warning at service start.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from forkmem._bytecode_scan import Scan, normalize_paths, scan, site_dirs, tree_root
from forkmem._bytecode_types import (
    BytecodeFile,
    BytecodeProblem,
    BytecodeReport,
    BytecodeStatus,
    CompileFailure,
    CompileResult,
    PathLike,
    SkippedModule,
)
from forkmem._units import format_bytes
from forkmem.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Iterable
    from types import ModuleType

__all__ = [
    "BytecodeFile",
    "BytecodeProblem",
    "BytecodeReport",
    "BytecodeStatus",
    "CompileFailure",
    "CompileResult",
    "SkippedModule",
    "check_bytecode",
    "compile_bytecode",
    "normalize_paths",
    "site_dirs",
    "warn_if_missing_bytecode",
]


def check_bytecode(
    *,
    modules: Iterable[ModuleType | str] | None = None,
    paths: PathLike | Iterable[PathLike] | None = None,
    optimization: int | None = None,
) -> BytecodeReport:
    """Report which source files have no usable bytecode cache.

    With no argument, checks every module in ``sys.modules`` that has a source file, using
    ``__spec__.origin`` (or ``__file__``) only. ``modules=`` checks the given modules (objects or
    names of loaded modules). ``paths=`` checks every ``.py`` under the given files and
    directories (a package, a site-packages) without importing anything; symlinked directories
    are followed, loops and unreadable directories go to
    [`BytecodeReport.problems`][forkmem.BytecodeReport.problems].

    ``optimization`` is the level whose pyc names are checked (``0``, ``1`` for ``opt-1``,
    ``2`` for ``opt-2``); default: the running interpreter's ``sys.flags.optimize``. Each file
    is judged from its pyc's 16-byte header exactly as the importer would judge it, honouring
    ``sys.pycache_prefix`` and ``--check-hash-based-pycs``. Writes nothing.

    Raises [`InvalidArgument`][forkmem.InvalidArgument] for bad arguments or a path that does not
    exist, and [`UnsupportedRuntime`][forkmem.UnsupportedRuntime] when this Python has no bytecode
    cache at all.
    """
    return as_report(scan(modules=modules, paths=paths, optimization=optimization))


def as_report(found: Scan) -> BytecodeReport:
    """The public report of a scan (the check's plain rows)."""
    return BytecodeReport(
        _rows=found.rows,
        skipped=tuple(SkippedModule(*s) for s in found.skipped),
        problems=tuple(BytecodeProblem(*p) for p in found.problems),
        optimization=found.optimization,
        cache_tag=found.cache_tag,
        pycache_prefix=found.pycache_prefix,
        dont_write_bytecode=found.dont_write_bytecode,
        check_source=found.check_source,
        scope=found.scope,
        paths=found.paths,
        counts=found.counts,
    )


def compile_bytecode(
    report_or_paths: BytecodeReport | PathLike | Iterable[PathLike],
    *,
    workers: int = 0,
    invalidation_mode: str | None = None,
) -> CompileResult:
    """Compile the missing, stale and unwritable files of a report (or of paths) to pycs.

    ``report_or_paths`` is a [`BytecodeReport`][forkmem.BytecodeReport] (its optimization level is
    used) or paths to check first with [`check_bytecode()`][forkmem.check_bytecode]. Files that are
    ok or sourceless are left alone. Each pyc is written with `py_compile.compile()` (atomic: a
    temporary file then ``os.replace``) at the report's cache path. The invalidation mode of an
    existing pyc is kept (hash-based stays hash-based); otherwise py_compile's default applies
    (timestamp, or checked-hash when ``SOURCE_DATE_EPOCH`` is set). ``invalidation_mode``
    (``"timestamp"``, ``"checked-hash"``, ``"unchecked-hash"``) overrides both.

    ``workers=0`` compiles in this process; ``workers=N`` runs N fresh interpreter
    subprocesses (``sys.executable -I``), never forks. Syntax errors and write errors are
    returned in [`CompileResult.failed`][forkmem.CompileResult.failed], not raised.
    """
    from forkmem import _pycompile

    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise InvalidArgument(f"workers must be an int >= 0, not {workers!r}")
    if invalidation_mode is not None and invalidation_mode not in _pycompile.MODES:
        raise InvalidArgument(
            f"invalidation_mode must be one of {', '.join(_pycompile.MODES)}, "
            f"not {invalidation_mode!r}"
        )
    if report_or_paths is None:
        # check_bytecode(paths=None) means "the loaded modules": compiling those was never
        # asked for, and would write pycs all over sys.path.
        raise InvalidArgument(
            "compile_bytecode() needs a BytecodeReport or paths, not None; for the loaded "
            "modules pass check_bytecode()"
        )
    if isinstance(report_or_paths, BytecodeReport):
        report = report_or_paths
    else:
        report = check_bytecode(paths=report_or_paths)
    jobs = [
        _pycompile.Job(
            f.source,
            f.cache,
            report.optimization,
            invalidation_mode or f.invalidation,
            _write_root(report, f.source),
        )
        for f in report.uncached
        if f.source is not None and f.cache is not None
    ]
    return _pycompile.run(jobs, workers=workers)


def _write_root(report: BytecodeReport, source: str) -> str:
    """The resolved tree `compile_bytecode()` may write ``source``'s pyc in, and nowhere else."""
    if report.pycache_prefix is not None:
        return os.path.realpath(report.pycache_prefix)
    if report.scope == "paths":
        for root in sorted(report.paths, key=len, reverse=True):
            if source == root or source.startswith(root.rstrip(os.sep) + os.sep):
                return tree_root(root)
    return os.path.realpath(os.path.dirname(source))


def warn_if_missing_bytecode(
    *, modules: Iterable[ModuleType | str] | None = None
) -> BytecodeReport | None:
    """Log one warning on logger ``"forkmem"`` when loaded modules have no usable pyc.

    Meant for service start (the server integrations call it). Checks ``sys.modules`` (or
    ``modules``); returns the report when something is missing, stale or unwritable (after
    logging one WARNING with the counts, the source bytes every new process compiles and the
    fix command), and ``None`` when everything is cached (nothing is logged). Never raises for
    what it finds.
    """
    import logging
    import shlex

    report = check_bytecode(modules=modules)
    if report.ok:
        return None
    uncached = report.uncached
    roots = _fix_roots(uncached)
    c = report.counts
    fix = "forkmem bytecode --fix " + " ".join(shlex.quote(r) for r in roots)
    msg = (
        f"{len(uncached)} of {len(report._rows)} loaded modules have no usable bytecode "
        f"cache ({c['missing']} missing, {c['stale']} stale, {c['unwritable']} unwritable): "
        f"every new process compiles {format_bytes(report.uncached_bytes)} of source. "
        f"Fix (at image build time, as the owner of the files): {fix}"
    )
    if report.dont_write_bytecode:
        msg += " (sys.dont_write_bytecode is set: this process will not write them itself)"
    logging.getLogger("forkmem").warning("%s", msg)
    return report


def _fix_roots(uncached: Iterable[BytecodeFile]) -> list[str]:
    """The sys.path entries (or directories) holding ``uncached``, longest match first."""
    entries = sorted(
        {os.path.abspath(p) for p in sys.path if p and os.path.isdir(p)}, key=len, reverse=True
    )
    roots: list[str] = []
    for f in uncached:
        src = os.path.abspath(f.source or "")
        root = next((e for e in entries if src.startswith(e + os.sep)), os.path.dirname(src))
        if root not in roots:
            roots.append(root)
    return roots
