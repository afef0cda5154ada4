"""One sample of a process tree: each member's memory, parent, command line and peak.

The ``memory``, ``watch`` and ``export`` commands and the metrics collector all draw from
`sample_tree()`, so a table, a JSON line, a growth report and a scrape agree on the figures.

It works on the kernel readers' plain fields, not on [`MemoryUsage`][forkmem.MemoryUsage]:
``forkmem memory`` starts as a fresh process each time, and the result types' ``dataclasses``
import alone would cost it more than the whole measurement of a small tree.
"""

from __future__ import annotations

import time

from forkmem import _proc_read, _ptable
from forkmem._pid import check_pid
from forkmem.errors import AccessDenied, NoSuchProcess

TYPE_CHECKING = False  # typing costs start-up time; mypy reads the block below all the same
if TYPE_CHECKING:
    import re
    from collections.abc import Collection, Iterable
    from typing import Any

__all__ = [
    "ProcessSample",
    "TreeSample",
    "process_name",
    "sample_processes",
    "sample_tree",
    "status_of",
]


def _memory_many(pids: list[int]) -> list[dict[str, Any] | NoSuchProcess | AccessDenied]:
    if _ptable.LINUX:
        return _proc_read.memory_fields_many(pids)
    import dataclasses

    from forkmem.usage import memory_many

    return [
        r if isinstance(r, (NoSuchProcess, AccessDenied)) else dataclasses.asdict(r)
        for r in memory_many(pids)
    ]


def status_of(pid: int) -> dict[str, Any]:
    """[`rss_breakdown()`][forkmem.rss_breakdown]'s fields as a dict, errors alike."""
    if _ptable.LINUX:
        return _proc_read.status_fields(pid)
    import dataclasses

    from forkmem.usage import rss_breakdown

    return dataclasses.asdict(rss_breakdown(pid))


def _status_peak(pid: int) -> int | None:
    peak: int | None = status_of(pid)["peak_rss"]
    return peak


def _peak(pid: int) -> int | None:
    try:
        return _status_peak(pid)
    except (NoSuchProcess, AccessDenied):
        return None


class ProcessSample:
    """One process in a `TreeSample`: ``fields`` holds the keys of
    [`MemoryUsage`][forkmem.MemoryUsage].

    ``shared_with_parent`` and ``share_of_parent`` are
    [`forkmem.cow_report()`][forkmem.cow_report]'s ``shared`` and ``efficiency`` against the
    process's parent, for members whose parent is sampled too (``None`` for the root and where
    the backend has no shared/private split).
    """

    __slots__ = (
        "cmdline",
        "fields",
        "name",
        "peak_rss",
        "ppid",
        "role",
        "share_of_parent",
        "shared_with_parent",
    )

    def __init__(
        self,
        fields: dict[str, Any],
        *,
        ppid: int | None,
        name: str,
        cmdline: str | None,
        peak_rss: int | None,
        shared_with_parent: int | None,
        share_of_parent: float | None,
        role: str,
    ) -> None:
        self.fields = fields
        self.ppid = ppid
        self.name = name
        self.cmdline = cmdline
        self.peak_rss = peak_rss
        self.shared_with_parent = shared_with_parent
        self.share_of_parent = share_of_parent
        self.role = role

    @property
    def pid(self) -> int:
        pid: int = self.fields["pid"]
        return pid

    def get(self, name: str) -> Any:
        """A ``MemoryUsage`` field (``rss``, ``uss``...) or this sample's own attribute."""
        if name in self.fields:
            return self.fields[name]
        return getattr(self, name)

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.fields)
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


class TreeSample:
    """A sample of several processes taken at ``time`` (seconds since the epoch)."""

    __slots__ = ("denied", "processes", "root", "skipped", "time")

    def __init__(
        self,
        time: float,
        root: int | None,
        processes: tuple[ProcessSample, ...],
        skipped: int,
        denied: int,
    ) -> None:
        self.time = time
        self.root = root
        self.processes = processes
        self.skipped = skipped
        self.denied = denied

    def totals(self) -> dict[str, int | None]:
        """Sums over the members; ``None`` where one member's figure is unknown."""
        out: dict[str, int | None] = {}
        for name in ("rss", "pss", "uss", "private_dirty", "swap"):
            values = [p.fields[name] for p in self.processes]
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


def _shared(child: dict[str, Any], parent: dict[str, Any]) -> tuple[int | None, float | None]:
    """`cow_report()`'s ``shared`` and ``efficiency`` from plain fields."""
    clean, dirty = child["shared_clean"], child["shared_dirty"]
    if clean is None or dirty is None:
        return None, None
    shared: int = clean + dirty
    return shared, shared / parent["rss"] if parent["rss"] else 0.0


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
    usages: dict[int, dict[str, Any]] = {}
    for pid, result in zip(wanted, _memory_many(wanted), strict=True):
        if isinstance(result, dict):
            usages[pid] = result
        elif root is not None and pid == root:
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
        shared, share = _shared(usage, parent) if parent is not None else (None, None)
        members.append(
            ProcessSample(
                usage,
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
    [`AccessDenied`][forkmem.AccessDenied] like [`forkmem.memory()`][forkmem.memory] (a missing
    root even when ``match`` would leave it out).
    """
    root = check_pid(pid)
    _status_peak(root)  # cheap: a missing root is the caller's error, with its reason
    parents = _ptable.parent_map()
    below = _ptable.descendants(root, parents) if tree else []
    pids = [root, *(p for p in below if p not in skip)]
    return sample_processes(pids, root=root, parents=parents, match=match)
