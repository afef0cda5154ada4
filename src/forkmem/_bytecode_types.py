"""The bytecode check's result types (a leaf: the checker and the compiler both build them)."""

from __future__ import annotations

import os  # noqa: TC003 (PathLike's forward reference is resolved in this module)
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Union

from forkmem._bytecode_rows import ROW_FIELDS, STATUSES, UNCACHED, euid, summary
from forkmem.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "STATUSES",
    "BytecodeFile",
    "BytecodeProblem",
    "BytecodeReport",
    "BytecodeStatus",
    "CompileFailure",
    "CompileResult",
    "PathLike",
    "Row",
    "SkippedModule",
    "euid",
]

BytecodeStatus = Literal["ok", "missing", "stale", "unwritable", "unsafe", "sourceless"]
"""Status of one module file; see [`BytecodeFile`][forkmem.BytecodeFile]."""

PathLike = Union[str, "os.PathLike[str]"]

Row = tuple[str | None, str | None, BytecodeStatus, str, int, str | None, str | None]
"""One file, in `BytecodeFile`'s field order (the check's plain rows)."""


@dataclass(frozen=True, slots=True)
class BytecodeFile:
    """The bytecode-cache state of one source (or sourceless pyc) file.

    ``status`` is one of:

    * ``"ok"``: a pyc the importer will accept is in place;
    * ``"missing"``: no pyc; every new process compiles the source;
    * ``"stale"``: a pyc exists but the importer rejects it (source edited: mtime/size or
      source hash differ; another Python's magic number; truncated or unreadable);
    * ``"unwritable"``: no valid pyc *and* this user cannot write the cache directory, so every
      new process compiles the source and tries (and fails) to write the pyc again;
    * ``"unsafe"``: the cache directory leaves the tree through a symlink (a symlinked
      ``__pycache__`` or source directory resolving outside it): the pyc found there is not
      vouched for, and `compile_bytecode()` refuses to write there;
    * ``"sourceless"``: only a pyc exists (loaded without a source, nothing to check).
    """

    source: str | None
    """The ``.py`` file (``None`` for a sourceless pyc)."""
    cache: str | None
    """The pyc path the importer reads: ``__pycache__/NAME.TAG[.opt-N].pyc`` or under
    ``sys.pycache_prefix``; for a sourceless file, the pyc itself."""
    status: BytecodeStatus
    """See above."""
    reason: str
    """Why, in words (e.g. ``"source mtime differs from the pyc's (source edited)"``)."""
    size: int
    """Bytes of source a new process compiles when the pyc is not usable (pyc size when
    sourceless)."""
    module: str | None = None
    """Module name when checked from loaded modules, else ``None``."""
    invalidation: str | None = None
    """Invalidation mode of the existing pyc: ``"timestamp"``, ``"checked-hash"``,
    ``"unchecked-hash"``, or ``None`` when there is no readable pyc."""


@dataclass(frozen=True, slots=True)
class SkippedModule:
    """A module or path that has no bytecode cache to check (builtin, frozen, zip, ...)."""

    name: str | None
    """Module name (``None`` for a path given directly)."""
    path: str
    """Its origin or path (may be empty)."""
    reason: str
    """Why it was skipped."""


@dataclass(frozen=True, slots=True)
class BytecodeProblem:
    """A path the check could not look into: unreadable directory, symlink loop, ..."""

    path: str
    """The path."""
    reason: str
    """What went wrong; the check went on with everything else."""


@dataclass(frozen=True, slots=True)
class BytecodeReport:
    """Result of [`check_bytecode()`][forkmem.check_bytecode]."""

    _rows: tuple[Row, ...] = field(repr=False)
    # One plain tuple per file, in BytecodeFile's field order: building thousands of frozen
    # dataclasses costs more than the check itself, so `files` builds them on first use.
    skipped: tuple[SkippedModule, ...]
    """Modules/paths with nothing to check, with the reason."""
    problems: tuple[BytecodeProblem, ...]
    """Paths that could not be read (they do not affect `ok`)."""
    optimization: int
    """Optimization level whose pyc names were checked (0, 1 -> ``opt-1``, 2 -> ``opt-2``)."""
    cache_tag: str
    """``sys.implementation.cache_tag``, e.g. ``"cpython-312"``."""
    pycache_prefix: str | None
    """``sys.pycache_prefix`` in force (``PYTHONPYCACHEPREFIX`` / ``-X pycache_prefix``)."""
    dont_write_bytecode: bool
    """``sys.dont_write_bytecode`` (``PYTHONDONTWRITEBYTECODE`` / ``-B``): when True this
    interpreter never writes a pyc, so missing ones stay missing."""
    check_source: str
    """``--check-hash-based-pycs`` mode: ``"default"``, ``"always"`` or ``"never"``."""
    scope: Literal["modules", "paths"]
    """What was checked: loaded modules or paths."""
    paths: tuple[str, ...] = ()
    """The paths checked (empty for modules)."""
    counts: Mapping[str, int] = field(default_factory=dict)
    """Number of files per status (every status present, zeros included)."""
    _files: tuple[BytecodeFile, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def files(self) -> tuple[BytecodeFile, ...]:
        """Every source (and sourceless pyc) found, sorted by path."""
        if self._files is None:
            object.__setattr__(self, "_files", tuple(BytecodeFile(*r) for r in self._rows))
        return self._files  # type: ignore[return-value]

    @property
    def ok(self) -> bool:
        """True when no file is missing, stale, unwritable or unsafe."""
        return not any(self.counts.get(s, 0) for s in UNCACHED)

    @property
    def uncached(self) -> tuple[BytecodeFile, ...]:
        """The files every new process must compile (missing, stale, unwritable, unsafe)."""
        return tuple(BytecodeFile(*r) for r in self._rows if r[2] in UNCACHED)

    @property
    def uncached_bytes(self) -> int:
        """Source bytes each new process compiles because their pyc is not usable."""
        return sum(r[4] for r in self._rows if r[2] in UNCACHED)

    def by_status(self, status: BytecodeStatus) -> tuple[BytecodeFile, ...]:
        """The files with ``status``."""
        if status not in STATUSES:
            raise InvalidArgument(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
        return tuple(BytecodeFile(*r) for r in self._rows if r[2] == status)

    def summary(self) -> str:
        """A short human summary (a few lines)."""
        return summary(self, self._rows, len(self.skipped), len(self.problems))

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole report."""
        return {
            "ok": self.ok,
            "scope": self.scope,
            "paths": list(self.paths),
            "counts": dict(self.counts),
            "files_total": len(self._rows),
            "uncached_bytes": self.uncached_bytes,
            "optimization": self.optimization,
            "cache_tag": self.cache_tag,
            "pycache_prefix": self.pycache_prefix,
            "dont_write_bytecode": self.dont_write_bytecode,
            "check_source": self.check_source,
            "files": [dict(zip(ROW_FIELDS, r, strict=True)) for r in self._rows],
            "skipped": [{"name": s.name, "path": s.path, "reason": s.reason} for s in self.skipped],
            "problems": [{"path": p.path, "reason": p.reason} for p in self.problems],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """[`as_dict()`][forkmem.BytecodeReport.as_dict] as a JSON string."""
        import json

        return json.dumps(self.as_dict(), indent=indent)


@dataclass(frozen=True, slots=True)
class CompileFailure:
    """A file `forkmem.compile_bytecode()` could not compile or write."""

    source: str
    """The source file."""
    cache: str
    """The pyc it should have written."""
    error: str
    """The error message (compiler message for a syntax error, OS error otherwise)."""
    syntax_error: bool
    """True when the source does not compile (the file is broken, not the cache)."""


@dataclass(frozen=True, slots=True)
class CompileResult:
    """Result of [`forkmem.compile_bytecode()`][forkmem.compile_bytecode]."""

    written: tuple[str, ...]
    """The pyc files written."""
    failed: tuple[CompileFailure, ...]
    """The files that could not be compiled or written, with the reason."""

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failed

    def summary(self) -> str:
        """One line for humans."""
        text = f"wrote {len(self.written)} pyc files"
        if self.failed:
            syntax = sum(f.syntax_error for f in self.failed)
            text += f", {len(self.failed)} failed ({syntax} syntax errors)"
        return text

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "written": list(self.written),
            "failed": [
                {
                    "source": f.source,
                    "cache": f.cache,
                    "error": f.error,
                    "syntax_error": f.syntax_error,
                }
                for f in self.failed
            ],
        }
