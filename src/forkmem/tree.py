"""A process tree's real footprint, and how much each forked child still shares.

[`memory_tree()`][forkmem.memory_tree] measures a process and all its descendants (found with
psutil) and sums them: ``total_pss`` is what the tree really costs, ``shared_savings`` what
copy-on-write saves compared with counting every RSS in full. [`cow_report()`][forkmem.cow_report]
compares one child with its parent.
"""

from __future__ import annotations

from dataclasses import dataclass

from forkmem._common import MemoryUsage, check_pid
from forkmem.errors import AccessDenied, NoSuchProcess, UnsupportedPlatform
from forkmem.usage import memory, memory_many

__all__ = ["CowReport", "TreeUsage", "cow_report", "memory_tree"]


@dataclass(frozen=True, slots=True)
class CowReport:
    """How much of its parent's memory a forked child still shares, in bytes.

    - ``private_dirty``: the child's ``Private_Dirty``: pages written since fork (copied by
      copy-on-write) plus the child's own new allocations.
    - ``shared``: the child's ``Shared_Clean + Shared_Dirty``, i.e. ``rss - uss``: resident pages
      the child maps that at least one other process maps too. Right after fork that is the
      parent's memory; it also includes shared libraries mapped by unrelated processes and pages
      shared only with sibling workers.
    - ``efficiency``: ``shared / parent_rss`` as a fraction (Shopify's Pitchfork definition,
      which prints it as a percentage). Near 1.0: the child still shares almost all of the
      parent; it falls as the child copies pages.
    """

    parent_pid: int
    child_pid: int
    parent_rss: int
    child_rss: int
    child_pss: int
    child_uss: int
    private_dirty: int
    shared: int
    efficiency: float


@dataclass(frozen=True, slots=True)
class TreeUsage:
    """Memory of a process and all its descendants.

    - ``processes``: one [`MemoryUsage`][forkmem.MemoryUsage] per process, the root first.
    - ``skipped``: descendants that exited (or became zombies) during the walk.
    - ``denied``: descendants whose memory the caller may not read (another user's).
    - ``total_pss``: the tree's real footprint (shared pages divided among their mappers).
    - ``total_rss`` / ``total_uss``: sums of RSS and USS.
    - ``shared_savings``: ``total_rss - total_pss``, what sharing saves against counting every
      process's RSS in full.

    Totals are ``None`` where a member's figure is unknown (psutil on a platform without PSS).
    """

    root: int
    processes: tuple[MemoryUsage, ...]
    skipped: int
    denied: int
    total_rss: int
    total_pss: int | None
    total_uss: int | None
    shared_savings: int | None

    def cow_reports(self) -> tuple[CowReport, ...]:
        """Return a `CowReport` of every descendant against the root process."""
        parent = self.processes[0]
        return tuple(cow_report(parent, child) for child in self.processes[1:])


def _sum(values: list[int | None]) -> int | None:
    total = 0
    for value in values:
        if value is None:
            return None
        total += value
    return total


def descendant_pids(pid: int) -> list[int]:
    """Pids of every descendant of ``pid`` (found with psutil), psutil errors mapped."""
    import psutil

    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        raise NoSuchProcess(f"process {pid} exited during the walk", pid=pid) from None
    except psutil.AccessDenied:
        raise AccessDenied(f"cannot list the children of process {pid}", pid=pid) from None


def memory_tree(pid: int | None = None) -> TreeUsage:
    """Measure process ``pid`` (default: the caller) and all its descendants.

    Descendants that exit during the walk are counted in ``skipped`` and ones the caller may not
    read in ``denied``; neither is an error. The root itself raises
    [`NoSuchProcess`][forkmem.NoSuchProcess] or [`AccessDenied`][forkmem.AccessDenied] like
    [`forkmem.memory()`][forkmem.usage.memory].
    """
    root_pid = check_pid(pid)
    root = memory(root_pid)
    processes = [root]
    skipped = denied = 0
    for result in memory_many(descendant_pids(root_pid)):
        if isinstance(result, MemoryUsage):
            processes.append(result)
        elif isinstance(result, NoSuchProcess):
            skipped += 1
        else:
            denied += 1
    total_rss = sum(p.rss for p in processes)
    total_pss = _sum([p.pss for p in processes])
    return TreeUsage(
        root=root_pid,
        processes=tuple(processes),
        skipped=skipped,
        denied=denied,
        total_rss=total_rss,
        total_pss=total_pss,
        total_uss=_sum([p.uss for p in processes]),
        shared_savings=None if total_pss is None else total_rss - total_pss,
    )


def _measure(pid: object) -> MemoryUsage:
    return memory(check_pid(pid, default_self=False))


def cow_report(parent: int | MemoryUsage, child: int | MemoryUsage) -> CowReport:
    """Compare a forked ``child`` with its ``parent`` (pids, or earlier `memory()` results).

    Passing pids measures both now. Raises [`UnsupportedPlatform`][forkmem.UnsupportedPlatform]
    where the backend has no shared/private split (psutil outside Linux), and
    [`InvalidArgument`][forkmem.InvalidArgument] for anything that is neither a pid nor a result.
    """
    p = parent if isinstance(parent, MemoryUsage) else _measure(parent)
    c = child if isinstance(child, MemoryUsage) else _measure(child)
    shared = c.shared
    if shared is None or c.private_dirty is None or c.pss is None or c.uss is None:
        raise UnsupportedPlatform(
            f"cow_report needs the kernel's shared/private split; {c.source!r} has none"
        )
    return CowReport(
        parent_pid=p.pid,
        child_pid=c.pid,
        parent_rss=p.rss,
        child_rss=c.rss,
        child_pss=c.pss,
        child_uss=c.uss,
        private_dirty=c.private_dirty,
        shared=shared,
        efficiency=shared / p.rss if p.rss else 0.0,
    )
