"""One sample of a process tree: each member's memory, parent, command line and peak.

The ``memory``, ``watch`` and ``export`` commands and the metrics collector all draw from
`sample_tree()`, so a table, a JSON line, a growth report and a scrape agree on the figures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forkmem import _ptable
from forkmem._common import MemoryUsage, check_pid
from forkmem.errors import AccessDenied, NoSuchProcess
from forkmem.tree import cow_report
from forkmem.usage import memory_many, rss_breakdown

if TYPE_CHECKING:
    import re
    from collections.abc import Collection, Iterable

__all__ = ["ProcessSample", "TreeSample", "process_name", "sample_processes", "sample_tree"]


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One process in a `TreeSample`.

    ``shared_with_parent`` and ``share_of_parent`` are
    [`forkmem.cow_report()`][forkmem.cow_report]'s ``shared`` and ``efficiency`` against the
    process's parent, for members whose parent is sampled too (``None`` for the root and where the
    backend has no shared/private split).
    """

    usage: MemoryUsage
    ppid: int | None
    name: str
    cmdline: str | None
    peak_rss: int | None
    shared_with_parent: int | None
    share_of_parent: float | None
    role: str

    @property
    def pid(self) -> int:
        return self.usage.pid

    def as_dict(self) -> dict[str, Any]:
        u = self.usage
        out: dict[str, Any] = {name: getattr(u, name) for name in u.__dataclass_fields__}
        out.update(
            command=self.name,
            ppid=self.ppid,
            cmdline=self.cmdline,
            peak_rss=self.peak_rss,
            shared_with_parent=self.shared_with_parent,
            share_of_parent=self.share_of_parent,
            role=self.role,
        )
        return out


@dataclass(frozen=True, slots=True)
class TreeSample:
    """A sample of several processes taken at ``time`` (seconds since the epoch)."""

    time: float
    root: int | None
    processes: tuple[ProcessSample, ...]
    skipped: int
    denied: int

    def totals(self) -> dict[str, int | None]:
        """Sums over the members; ``None`` where one member's figure is unknown."""
        out: dict[str, int | None] = {}
        for name in ("rss", "pss", "uss", "private_dirty", "swap"):
            values = [getattr(p.usage, name) for p in self.processes]
            out[name] = None if None in values else sum(values)
        rss, pss = out["rss"], out["pss"]
        out["shared_savings"] = None if rss is None or pss is None else rss - pss
        return out


def process_name(pid: int) -> str:
    """The process's command name (``/proc/PID/comm``, else psutil's); "?" when neither reads it."""
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        pass
    try:
        import psutil

        return str(psutil.Process(pid).name())
    except Exception:  # the name is decoration: never fail a sample over it
        return "?"


def _peak(pid: int) -> int | None:
    try:
        return rss_breakdown(pid).peak_rss
    except (NoSuchProcess, AccessDenied):
        return None


def sample_processes(
    pids: Iterable[int],
    *,
    root: int | None = None,
    parents: dict[int, int] | None = None,
    match: re.Pattern[str] | None = None,
) -> TreeSample:
    """Measure ``pids``; members that exit are counted as skipped, unreadable ones as denied.

    ``root``'s own errors (gone, unreadable) are raised instead.

    ``match`` keeps only processes whose command line it matches (``re.search``); a process is
    measured only once it matched, so a filter on a large system stays cheap.
    """
    ppids = _ptable.parent_map() if parents is None else parents
    wanted: list[int] = []
    lines: dict[int, str | None] = {}
    for pid in pids:
        line = _ptable.cmdline(pid)
        if match is not None and (line is None or not match.search(line)):
            continue
        wanted.append(pid)
        lines[pid] = line
    skipped = denied = 0
    usages: dict[int, MemoryUsage] = {}
    for result in memory_many(wanted):
        if isinstance(result, MemoryUsage):
            usages[result.pid] = result
        elif root is not None and result.pid == root:
            raise result
        elif isinstance(result, NoSuchProcess):
            skipped += 1
        else:
            denied += 1
    members: list[ProcessSample] = []
    for pid in wanted:
        usage = usages.get(pid)
        if usage is None:
            continue
        ppid = ppids.get(pid)
        parent = usages.get(ppid) if ppid is not None and pid != root else None
        shared = share = None
        if parent is not None and usage.shared is not None and usage.private_dirty is not None:
            report = cow_report(parent, usage)
            shared, share = report.shared, report.efficiency
        members.append(
            ProcessSample(
                usage=usage,
                ppid=ppid,
                name=process_name(pid),
                cmdline=lines[pid],
                peak_rss=_peak(pid),
                shared_with_parent=shared,
                share_of_parent=share,
                role="root" if pid == root else "child",
            )
        )
    return TreeSample(time.time(), root, tuple(members), skipped, denied)


def sample_tree(
    pid: int | None = None,
    *,
    tree: bool = True,
    match: re.Pattern[str] | None = None,
    skip: Collection[int] = (),
) -> TreeSample:
    """Sample process ``pid`` (default: the caller) and, with ``tree``, all its descendants
    but those in ``skip`` (a watcher leaves itself out).

    The root itself raises [`NoSuchProcess`][forkmem.NoSuchProcess] /
    [`AccessDenied`][forkmem.AccessDenied] like [`forkmem.memory()`][forkmem.usage.memory] (a
    missing root even when ``match`` would leave it out).
    """
    root = check_pid(pid)
    rss_breakdown(root)  # cheap: a missing root is the caller's error
    parents = _ptable.parent_map()
    pids = [
        root,
        *(p for p in (_ptable.descendants(root, parents) if tree else ()) if p not in skip),
    ]
    return sample_processes(pids, root=root, parents=parents, match=match)
