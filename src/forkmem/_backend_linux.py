"""Linux backend: the kernel readers' plain fields (``_proc_read``) as forkmem's result types."""

from __future__ import annotations

from forkmem._common import MemoryUsage, RssBreakdown
from forkmem._proc_read import memory_fields, memory_fields_many, smaps_fields, status_fields
from forkmem.errors import AccessDenied, NoSuchProcess

__all__ = ["memory", "memory_from_smaps", "memory_many", "rss_breakdown"]


def memory(pid: int) -> MemoryUsage:
    """Return [`MemoryUsage`][forkmem.MemoryUsage] for ``pid`` from smaps_rollup (or smaps)."""
    return MemoryUsage(**memory_fields(pid))


def memory_many(pids: list[int]) -> list[MemoryUsage | NoSuchProcess | AccessDenied]:
    """`memory()` for many pids, with per-pid errors returned in place of results."""
    return [
        r if isinstance(r, (NoSuchProcess, AccessDenied)) else MemoryUsage(**r)
        for r in memory_fields_many(pids)
    ]


def memory_from_smaps(pid: int) -> MemoryUsage:
    """Sum ``/proc/PID/smaps`` (the path for kernels without smaps_rollup; 5-30x slower)."""
    return MemoryUsage(**smaps_fields(pid))


def rss_breakdown(pid: int) -> RssBreakdown:
    """Return [`RssBreakdown`][forkmem.RssBreakdown] for ``pid`` from ``/proc/PID/status``."""
    return RssBreakdown(**status_fields(pid))
