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
import stat
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Literal

from forkmem import _confine, _pyc
from forkmem._bytecode_types import (
    STATUSES,
    BytecodeFile,
    BytecodeProblem,
    BytecodeReport,
    BytecodeStatus,
    CompileFailure,
    CompileResult,
    PathLike,
    Row,
    SkippedModule,
    euid,
)
from forkmem._units import format_bytes
from forkmem.errors import InvalidArgument, UnsupportedRuntime

if TYPE_CHECKING:
    from collections.abc import Iterable

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


def _fspath(p: object, what: str) -> str:
    try:
        path = os.fspath(p)  # type: ignore[call-overload]
    except TypeError:
        raise InvalidArgument(
            f"{what} must be str or os.PathLike, not {type(p).__name__}"
        ) from None
    if not isinstance(path, str):
        raise InvalidArgument(f"{what} must be str or os.PathLike[str], not bytes")
    return path


_CHECKABLE = (*_pyc.SOURCE_SUFFIXES, _pyc.BYTECODE_SUFFIX, *_pyc.ZIP_SUFFIXES)


def normalize_paths(paths: PathLike | Iterable[PathLike]) -> list[str]:
    if isinstance(paths, (str, bytes, os.PathLike)):
        items: list[object] = [paths]
    else:
        try:
            items = list(paths)
        except TypeError:
            raise InvalidArgument(
                f"paths must be a path or an iterable of paths, not {type(paths).__name__}"
            ) from None
    out: list[str] = []
    for item in items:
        path = _fspath(item, "each path")
        if not path:
            raise InvalidArgument("an empty string is not a path")
        if not os.path.lexists(path):
            raise InvalidArgument(f"no such file or directory: {path!r}")
        if not os.path.isdir(path) and not path.endswith(_CHECKABLE):
            # Checking it would check nothing, and "every source is fine" would be a lie.
            raise InvalidArgument(f"not a directory nor a Python source, pyc or zip file: {path!r}")
        out.append(os.path.abspath(path))
    if not out:
        raise InvalidArgument("paths is empty: give at least one file or directory")
    return out


def _module_items(modules: Iterable[ModuleType | str] | None) -> list[tuple[str, object]]:
    # ModuleType is tested first on purpose: a failed isinstance() reads obj.__class__, and any
    # attribute read executes a module loaded by importlib.util.LazyLoader (_pyc.namespace).
    if modules is None:
        return list(sys.modules.items())
    if isinstance(modules, (ModuleType, str)):
        modules = [modules]
    try:
        given = list(modules)
    except TypeError:
        raise InvalidArgument(
            f"modules must be a module, a name or an iterable of them, not {type(modules).__name__}"
        ) from None
    items: list[tuple[str, object]] = []
    for m in given:
        if isinstance(m, ModuleType):
            name = _pyc.namespace(m).get("__name__")
            items.append((name if isinstance(name, str) else "", m))
        elif isinstance(m, str):
            mod = sys.modules.get(m)
            if mod is None:
                # Never import to find out: a name that is not loaded has nothing to check.
                raise InvalidArgument(f"module {m!r} is not loaded (forkmem never imports it)")
            items.append((m, mod))
        else:
            raise InvalidArgument(f"modules must hold modules or names, not {type(m).__name__}")
    return items


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
    if modules is not None and paths is not None:
        raise InvalidArgument("give modules= or paths=, not both")
    if optimization is None:
        optimization = sys.flags.optimize
    # bool and float compare equal to 0/1 but would name a pyc ".opt-True" or ".opt-1.0".
    if type(optimization) is not int or optimization not in (0, 1, 2):
        raise InvalidArgument(f"optimization must be 0, 1 or 2, not {optimization!r}")
    tag = sys.implementation.cache_tag
    if tag is None:
        raise UnsupportedRuntime("this Python has no bytecode cache (cache_tag is None)")

    judge = _Judge(tag, optimization)
    scope: Literal["modules", "paths"]
    if paths is not None:
        roots = normalize_paths(paths)
        scope = "paths"
        for root in roots:
            judge.root = tree_root(root)
            judge.groups(_pyc.iter_paths([root], linked=judge.linked), listdir=True)
    else:
        roots = []
        scope = "modules"
        judge.groups(_pyc.iter_modules(_module_items(modules)), listdir=False)
    counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for row in judge.rows:
        counts[row[2]] += 1
    return BytecodeReport(
        _rows=tuple(sorted(judge.rows, key=lambda r: r[0] or r[1] or "")),
        skipped=tuple(judge.skipped),
        problems=tuple(judge.problems),
        optimization=optimization,
        cache_tag=tag,
        pycache_prefix=sys.pycache_prefix,
        dont_write_bytecode=sys.dont_write_bytecode,
        check_source=judge.check_mode,
        scope=scope,
        paths=tuple(roots),
        counts=counts,
    )


class _Judge:
    """Judges sources directory by directory, as the importer would (see _pyc.validate)."""

    def __init__(self, tag: str, optimization: int) -> None:
        self.tag = tag
        self.opt = _pyc.opt_tag(optimization)
        self.check_mode = _pyc.check_source_mode()
        self.dirs = _pyc.CacheDirs()
        # A timestamp pyc of this Python starts with these 8 bytes (magic, flags 0).
        self.plain = _pyc.MAGIC + bytes(4)
        self.rows: list[Row] = []
        self.skipped: list[SkippedModule] = []
        self.problems: list[BytecodeProblem] = []
        # The resolved tree being checked (None for loaded modules: each one's directory), and
        # the directories the walk entered through a symlink.
        self.root: str | None = None
        self.linked: set[str] = set()

    def confined(self, directory: str, cdir: str) -> str | None:
        """Why `compile_bytecode()` may not write in ``cdir`` (see `forkmem._confine`), or None.

        The full resolve-and-compare runs only where a symlink can be on the way: a symlinked
        ``__pycache__`` (one lstat per directory) or a directory the walk entered by a link.
        """
        prefix = sys.pycache_prefix
        if prefix is not None:
            return _confine.escape(cdir, os.path.realpath(prefix))
        try:
            link = stat.S_ISLNK(os.lstat(cdir).st_mode)
        except OSError:
            link = False
        sep = os.sep
        via = any(directory == d or directory.startswith(d + sep) for d in self.linked)
        if not (link or via):
            return None
        root = self.root if self.root is not None else os.path.realpath(directory)
        return _confine.escape(cdir, root)

    def sources(self, directory: str, sources: list[_pyc.Source], *, listdir: bool) -> None:
        """Judge the sources of one directory: one stat each (done) plus one 16-byte read."""
        if not sources:
            return
        dirs = self.dirs
        cdir = dirs.cache_dir(directory or os.curdir)
        unsafe = self.confined(directory or os.curdir, cdir)
        if unsafe is not None:
            tail = f"{self.tag}{self.opt}{_pyc.BYTECODE_SUFFIX}"
            for path, size, _mtime, module in sources:
                stem, dot, rest = path.rpartition(os.sep)[2].rpartition(".")
                cache = f"{cdir}{os.sep}{stem or rest}{dot}{tail}"
                self.rows.append((path, cache, "unsafe", unsafe, size, module, None))
            return
        # After the first missing pyc of a directory, one listdir of its cache directory
        # spares an open() per further missing pyc (a tree whose pycs were deleted); a fully
        # compiled directory never pays for the listdir.
        names: set[str] | None = None
        sep = os.sep
        tail = f"{self.tag}{self.opt}{_pyc.BYTECODE_SUFFIX}"
        prefix = cdir + sep
        plain = self.plain
        unpack = _pyc.TIMESTAMP.unpack_from
        os_open, os_read, os_close, flags = os.open, os.read, os.close, _pyc.O_FLAGS
        append = self.rows.append
        header: bytes | OSError | None
        for path, size, mtime, module in sources:
            stem, dot, rest = path.rpartition(sep)[2].rpartition(".")
            pname = f"{stem or rest}{dot}{tail}"
            cache = prefix + pname
            # Read the 16-byte header with bare os calls: this loop runs once per file.
            if names is not None and pname not in names:
                header = None
            else:
                try:
                    fd = os_open(cache, flags)
                except FileNotFoundError:
                    header = None
                    if listdir:
                        listdir = False
                        try:
                            names = set(os.listdir(cdir))
                        except FileNotFoundError:
                            names = set()
                        except OSError:
                            names = None
                except OSError as exc:
                    header = exc
                else:
                    try:
                        header = os_read(fd, 16)
                    except OSError as exc:
                        header = exc
                    finally:
                        os_close(fd)
            if header.__class__ is bytes and header[:8] == plain and len(header) == 16:
                # Fast path: a timestamp pyc of this Python whose mtime and size match.
                pyc_mtime, pyc_size = unpack(header, 8)
                if pyc_mtime == int(mtime) & 0xFFFFFFFF and pyc_size == size & 0xFFFFFFFF:
                    append((path, cache, "ok", "timestamp pyc matches", size, module, "timestamp"))
                    continue
            mode: str | None = None
            if header is None:
                valid, reason = False, "no pyc"
            elif isinstance(header, OSError):
                valid, reason = False, f"cannot read the pyc: {header.strerror}"
            else:
                valid, reason, mode = _pyc.validate(header, path, mtime, size, self.check_mode)
            status: BytecodeStatus
            if valid:
                status = "ok"
            elif not dirs.writable(cdir):
                status = "unwritable"
                reason = f"{reason}; cache directory not writable by uid {euid()}"
            else:
                status = "missing" if header is None else "stale"
            append((path, cache, status, reason, size, module, mode))

    def others(self, found: list[_pyc.Found]) -> None:
        """Sourceless pycs, skipped modules and unreadable paths."""
        for f in found:
            if f.kind == "sourceless":
                self.rows.append(
                    (None, f.path, "sourceless", "pyc without a source", f.size, f.module, None)
                )
            elif f.kind == "skipped":
                self.skipped.append(SkippedModule(f.module, f.path, f.reason))
            else:
                self.problems.append(BytecodeProblem(f.path, f.reason))

    def groups(self, groups: Iterable[_pyc.Group], *, listdir: bool) -> None:
        for directory, sources, found in groups:
            self.sources(directory, sources, listdir=listdir)
            self.others(found)


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


def tree_root(path: str) -> str:
    """The resolved tree a path given to the check stands for (a file: its directory)."""
    return os.path.realpath(path if os.path.isdir(path) else os.path.dirname(path) or os.curdir)


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


def site_dirs() -> list[str]:
    """This interpreter's existing site-packages directories (user site included)."""
    import site

    dirs: list[str] = []
    candidates = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    for d in candidates:
        if os.path.isdir(d) and os.path.realpath(d) not in {os.path.realpath(x) for x in dirs}:
            dirs.append(d)
    return dirs
