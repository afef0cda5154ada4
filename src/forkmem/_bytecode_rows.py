"""The bytecode check's statuses, its row fields and its summary text (a leaf).

The check builds plain tuples; the public report types (in `forkmem._bytecode_types`) and
the CLI both read them, so the CLI prints the summary without the dataclass machinery.
"""

from __future__ import annotations

import os

from forkmem._units import format_bytes

# The check's path never imports typing (see forkmem._bytecode_scan): the aliases the rows
# are annotated with live in forkmem._bytecode_types, with the public types.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Protocol

    from forkmem._bytecode_types import BytecodeStatus, Row

    class Described(Protocol):
        """What the summary reads of a report (`BytecodeReport` or a scan)."""

        @property
        def scope(self) -> str: ...
        @property
        def paths(self) -> tuple[str, ...]: ...
        @property
        def counts(self) -> Mapping[str, int]: ...
        @property
        def optimization(self) -> int: ...
        @property
        def cache_tag(self) -> str: ...
        @property
        def pycache_prefix(self) -> str | None: ...
        @property
        def dont_write_bytecode(self) -> bool: ...


__all__ = [
    "STATUSES",
    "UNCACHED",
    "ROW_FIELDS",
    "euid",
    "summary",
]

STATUSES: tuple[BytecodeStatus, ...] = (
    "ok",
    "missing",
    "stale",
    "unwritable",
    "unsafe",
    "sourceless",
)
UNCACHED = frozenset({"missing", "stale", "unwritable", "unsafe"})

# The fields of a Row (forkmem._bytecode_types), in `BytecodeFile`'s order.
ROW_FIELDS = ("source", "cache", "status", "reason", "size", "module", "invalidation")


def euid() -> int:
    """The effective uid, or -1 where the platform has none (Windows)."""
    return os.geteuid() if hasattr(os, "geteuid") else -1


def summary(report: Described, rows: Sequence[Row], skipped: int, problems: int) -> str:
    """A short human summary (a few lines) of a report, its rows and how many were skipped
    or could not be read."""
    counts = report.counts
    what = "loaded modules" if report.scope == "modules" else ", ".join(report.paths)
    parts = ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s))
    level = f"opt-{report.optimization} " if report.optimization else ""
    lines = [
        f"bytecode cache ({level}{report.cache_tag}) of {what}: {len(rows)} files: "
        f"{parts or 'none'}"
    ]
    bad = sum(counts.get(s, 0) for s in UNCACHED)
    if not bad:
        lines.append("every source file has a valid pyc")
    else:
        uncached_bytes = sum(r[4] for r in rows if r[2] in UNCACHED)
        lines.append(
            f"{bad} files ({format_bytes(uncached_bytes)} of source) are compiled "
            "by every new process"
        )
    if counts.get("unwritable"):
        lines.append(
            f"{counts['unwritable']} of them sit where this user (uid {euid()}) "
            "cannot write the cache; the importer retries the write at every start"
        )
    if counts.get("unsafe"):
        lines.append(
            f"{counts['unsafe']} of them have a cache directory that leaves the tree "
            "through a symlink: --fix refuses to write there (see their reason)"
        )
    if report.dont_write_bytecode:
        lines.append("sys.dont_write_bytecode is set: this interpreter never writes pycs")
    if report.pycache_prefix:
        lines.append(f"pycs are looked up under the pycache prefix {report.pycache_prefix}")
    if skipped:
        lines.append(f"{skipped} skipped (builtin, frozen, zip, extension, ...)")
    if problems:
        lines.append(f"{problems} paths could not be read (see problems)")
    return "\n".join(lines)
