"""Measure one process's memory the way the kernel accounts it after fork.

[`memory()`][forkmem.usage.memory] returns RSS, PSS, USS and the shared/private split from one read
of ``/proc/PID/smaps_rollup`` on Linux (``/proc/PID/smaps`` summed on kernels older than 4.14,
psutil elsewhere). [`rss_breakdown()`][forkmem.rss_breakdown] is the cheap tier for hot loops:
``/proc/PID/status`` only, a few microseconds at any heap size, but no PSS/USS.

The platform-specific work lives in private backends (``_backend_linux``, ``_backend_psutil``);
their result types in the leaf ``_common``; this module picks the backend once.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from forkmem import _backend_linux, _backend_psutil
from forkmem._common import MemoryUsage, RssBreakdown, check_pid

if TYPE_CHECKING:
    from types import ModuleType

    from forkmem.errors import AccessDenied, NoSuchProcess

__all__ = ["MemoryUsage", "RssBreakdown", "memory", "memory_many", "rss_breakdown"]

# Picked once: /proc where there is one, psutil's figures elsewhere.
_backend: ModuleType = (
    _backend_linux
    if sys.platform.startswith("linux") and os.path.isdir("/proc/self")
    else _backend_psutil
)


def memory(pid: int | None = None) -> MemoryUsage:
    """Return the memory of process ``pid`` (default: the calling process).

    On Linux this is one read of ``/proc/PID/smaps_rollup``; its cost grows with resident memory
    (a few ms per GiB, the kernel walks the page tables). For a hot loop use
    [`rss_breakdown()`][forkmem.rss_breakdown].

    Raises [`NoSuchProcess`][forkmem.NoSuchProcess] for a pid that does not exist, was reaped, is a
    zombie or a kernel thread; [`AccessDenied`][forkmem.AccessDenied] for another user's process;
    [`ProcParseError`][forkmem.ProcParseError] if the kernel file is garbled;
    [`InvalidArgument`][forkmem.InvalidArgument] for a pid that is not a positive int that fits a
    ``pid_t`` (at most ``2**31 - 1``).
    """
    result: MemoryUsage = _backend.memory(check_pid(pid))
    return result


def rss_breakdown(pid: int | None = None) -> RssBreakdown:
    """Return the cheap RSS split of process ``pid`` (default: the calling process).

    Reads only ``/proc/PID/status`` on Linux: microseconds, independent of heap size, and readable
    even for other users' processes. Errors as for [`memory()`][forkmem.usage.memory].
    """
    result: RssBreakdown = _backend.rss_breakdown(check_pid(pid))
    return result


def memory_many(pids: list[int]) -> list[MemoryUsage | NoSuchProcess | AccessDenied]:
    """`memory()` for many pids, each pid's error returned in place of its result."""
    result: list[MemoryUsage | NoSuchProcess | AccessDenied] = _backend.memory_many(pids)
    return result
