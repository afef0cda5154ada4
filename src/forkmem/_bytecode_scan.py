"""The bytecode check itself: walk, judge each source against its pyc, return plain rows.

[`check_bytecode()`][forkmem.check_bytecode] wraps the result in the public report types;
`forkmem bytecode` prints it directly, so a fresh process checking a tree never loads the
dataclass machinery those types need (about a sixth of its run time).
"""

from __future__ import annotations

import os
import stat
import sys
from types import ModuleType

from forkmem import _confine, _pyc
from forkmem._bytecode_rows import STATUSES, UNCACHED, euid, summary
from forkmem.errors import InvalidArgument, UnsupportedRuntime

# typing (and the re, functools and contextlib it loads) would be a tenth of a fresh
# `forkmem bytecode` process; the annotations here are only read by type checkers.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable
    from typing import Literal

    from forkmem._bytecode_types import BytecodeStatus, PathLike, Row

__all__ = ["Scan", "normalize_paths", "scan", "site_dirs", "tree_root"]


class Scan:
    """What the check found, as plain tuples; fields as in `BytecodeReport`.

    A plain class, not a NamedTuple: see TYPE_CHECKING above.
    """

    __slots__ = (
        "cache_tag",
        "check_source",
        "counts",
        "dont_write_bytecode",
        "optimization",
        "paths",
        "problems",
        "pycache_prefix",
        "rows",
        "scope",
        "skipped",
    )

    def __init__(
        self,
        *,
        rows: tuple[Row, ...],
        skipped: tuple[tuple[str | None, str, str], ...],
        problems: tuple[tuple[str, str], ...],
        optimization: int,
        cache_tag: str,
        pycache_prefix: str | None,
        dont_write_bytecode: bool,
        check_source: str,
        scope: Literal["modules", "paths"],
        paths: tuple[str, ...],
        counts: dict[str, int],
    ) -> None:
        self.rows = rows
        self.skipped = skipped
        """(module name, path, reason) of each skipped module or path."""
        self.problems = problems
        """(path, reason) of each path that could not be read."""
        self.optimization = optimization
        self.cache_tag = cache_tag
        self.pycache_prefix = pycache_prefix
        self.dont_write_bytecode = dont_write_bytecode
        self.check_source = check_source
        self.scope = scope
        self.paths = paths
        self.counts = counts

    @property
    def ok(self) -> bool:
        return not any(self.counts[s] for s in UNCACHED)

    def uncached(self) -> list[Row]:
        return [r for r in self.rows if r[2] in UNCACHED]

    def summary(self) -> str:
        return summary(self, self.rows, len(self.skipped), len(self.problems))


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


def scan(
    *,
    modules: Iterable[ModuleType | str] | None = None,
    paths: PathLike | Iterable[PathLike] | None = None,
    optimization: int | None = None,
) -> Scan:
    """`check_bytecode()`'s work, with its arguments and errors (see there)."""
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
    return Scan(
        rows=tuple(sorted(judge.rows, key=lambda r: r[0] or r[1] or "")),
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


def tree_root(path: str) -> str:
    """The resolved tree a path given to the check stands for (a file: its directory)."""
    return os.path.realpath(path if os.path.isdir(path) else os.path.dirname(path) or os.curdir)


# The cache directory itself may be a symlink: confined() has vouched for it already.
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


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
        self.skipped: list[tuple[str | None, str, str]] = []
        self.problems: list[tuple[str, str]] = []
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
        if sources:
            cdir = self.dirs.cache_dir(directory or os.curdir)
            self.judge(cdir, self.confined(directory or os.curdir, cdir), sources, listdir)

    def judge(
        self, cdir: str, unsafe: str | None, sources: list[_pyc.Source], listdir: bool
    ) -> None:
        """Judge one directory's sources against the pycs in ``cdir``."""
        if unsafe is not None:
            tail = f"{self.tag}{self.opt}{_pyc.BYTECODE_SUFFIX}"
            for path, size, _mtime, module in sources:
                stem, dot, rest = path.rpartition(os.sep)[2].rpartition(".")
                cache = f"{cdir}{os.sep}{stem or rest}{dot}{tail}"
                self.rows.append((path, cache, "unsafe", unsafe, size, module, None))
            return
        # Each pyc is opened relative to its cache directory, opened once: the kernel resolves
        # one name per file, not the whole path. No cache directory: no pyc, nothing to open.
        cfd: int | None
        try:
            cfd = os.open(cdir, _DIR_FLAGS)
        except FileNotFoundError:
            cfd = -1
        except OSError:
            cfd = None  # each open below reports the error for its own file
        try:
            self._headers(cdir, cfd, sources, listdir=listdir)
        finally:
            if cfd is not None and cfd >= 0:
                os.close(cfd)

    def _headers(
        self, cdir: str, cfd: int | None, sources: list[_pyc.Source], *, listdir: bool
    ) -> None:
        # After the first missing pyc of a directory, one listdir of its cache directory
        # spares an open() per further missing pyc (a tree whose pycs were deleted); a fully
        # compiled directory never pays for the listdir.
        names: set[str] | None = set() if cfd == -1 else None
        dirs = self.dirs
        sep = os.sep
        tail = f"{self.tag}{self.opt}{_pyc.BYTECODE_SUFFIX}"
        prefix = cdir + sep
        plain = self.plain
        pack = _pyc.TIMESTAMP.pack
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
                    fd = os_open(cache, flags) if cfd is None else os_open(pname, flags, dir_fd=cfd)
                except FileNotFoundError:
                    header = None
                    if listdir:
                        listdir = False
                        try:
                            names = set(os.listdir(cdir if cfd is None else cfd))
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
            # Fast path: the header of a timestamp pyc of this Python whose mtime and size
            # match, built and compared whole (one comparison instead of four).
            if header == plain + pack(int(mtime) & 0xFFFFFFFF, size & 0xFFFFFFFF):
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
                self.skipped.append((f.module, f.path, f.reason))
            else:
                self.problems.append((f.path, f.reason))

    def groups(self, groups: Iterable[_pyc.Group], *, listdir: bool) -> None:
        for directory, sources, found in groups:
            self.sources(directory, sources, listdir=listdir)
            self.others(found)
