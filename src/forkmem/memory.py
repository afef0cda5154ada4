"""Measure one process's memory the way the kernel accounts it after fork.

:func:`memory` returns RSS, PSS, USS and the shared/private split from one read of
``/proc/PID/smaps_rollup`` on Linux (``/proc/PID/smaps`` summed on kernels older than 4.14, psutil
elsewhere). :func:`rss_breakdown` is the cheap tier for hot loops: ``/proc/PID/status`` only, a few
microseconds at any heap size, but no PSS/USS.

The platform-specific work lives in private backends (``_backend_linux``, ``_backend_psutil``);
this module holds the result types and picks the backend.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forkmem.errors import InvalidArgument

if TYPE_CHECKING:
    from types import ModuleType

__all__ = ["MemoryUsage", "RssBreakdown", "memory", "rss_breakdown"]


@dataclass(frozen=True, slots=True)
class MemoryUsage:
    """One process's memory, in bytes, as the kernel accounts it.

    - ``rss``: resident pages mapped by the process (shared ones counted in full).
    - ``pss``: proportional set size, each resident page divided by the number of processes
      mapping it. Summing ``pss`` over a process tree gives the tree's real footprint.
    - ``uss``: unique set size, ``private_clean + private_dirty`` (+ private hugetlb pages): what
      the system gets back if this process exits.
    - ``shared_clean`` / ``shared_dirty``: resident pages also mapped by another process.
    - ``private_clean`` / ``private_dirty``: resident pages only this process maps. In a forked
      child, ``private_dirty`` grows by every page copy-on-write had to copy.
    - ``swap`` / ``swap_pss``: swapped-out pages, in full and proportionally.
    - ``pss_anon`` / ``pss_file`` / ``pss_shmem`` (Linux 5.3+) and ``pss_dirty`` (Linux 6.0+):
      the PSS split by page kind, only available from ``smaps_rollup``.

    A field is ``None`` when the backend cannot know it (an older kernel, or psutil on a platform
    without PSS). ``source`` names where the figures came from: ``"smaps_rollup"``, ``"smaps"`` or
    ``"psutil"``.
    """

    pid: int
    rss: int
    pss: int | None
    uss: int | None
    shared_clean: int | None
    shared_dirty: int | None
    private_clean: int | None
    private_dirty: int | None
    swap: int | None
    swap_pss: int | None
    pss_anon: int | None
    pss_file: int | None
    pss_shmem: int | None
    pss_dirty: int | None
    source: str

    @property
    def shared(self) -> int | None:
        """Resident bytes also mapped by another process: ``shared_clean + shared_dirty``."""
        if self.shared_clean is None or self.shared_dirty is None:
            return None
        return self.shared_clean + self.shared_dirty


@dataclass(frozen=True, slots=True)
class RssBreakdown:
    """The cheap tier: resident memory from ``/proc/PID/status``, in bytes, no PSS/USS.

    - ``rss``: ``VmRSS`` (= ``rss_anon + rss_file + rss_shmem``).
    - ``rss_anon`` / ``rss_file`` / ``rss_shmem``: ``RssAnon``, ``RssFile``, ``RssShmem``
      (Linux 4.5+); heap growth and copy-on-write copies show up in ``rss_anon``.
    - ``swap``: ``VmSwap``. ``peak_rss``: ``VmHWM``, the high-water mark of ``rss``.

    A field is ``None`` when the platform does not report it. ``source`` is ``"status"`` on
    Linux, ``"psutil"`` elsewhere.
    """

    pid: int
    rss: int
    rss_anon: int | None
    rss_file: int | None
    rss_shmem: int | None
    swap: int | None
    peak_rss: int | None
    source: str


_backend_module: ModuleType | None = None


def _backend() -> ModuleType:
    global _backend_module
    if _backend_module is None:
        if sys.platform.startswith("linux") and os.path.isdir("/proc/self"):
            from forkmem import _backend_linux

            _backend_module = _backend_linux
        else:
            from forkmem import _backend_psutil

            _backend_module = _backend_psutil
    return _backend_module


def _check_pid(pid: int | None) -> int:
    if pid is None:
        return os.getpid()
    if isinstance(pid, bool) or not isinstance(pid, int):
        raise InvalidArgument(f"pid must be an int or None, not {type(pid).__name__}")
    if pid <= 0:
        raise InvalidArgument(f"pid must be a positive int, not {pid}")
    return pid


def memory(pid: int | None = None) -> MemoryUsage:
    """Return the memory of process ``pid`` (default: the calling process).

    On Linux this is one read of ``/proc/PID/smaps_rollup``; its cost grows with resident memory
    (a few ms per GiB, the kernel walks the page tables). For a hot loop use
    :func:`rss_breakdown`.

    Raises :class:`~forkmem.NoSuchProcess` for a pid that does not exist, was reaped, is a zombie
    or a kernel thread; :class:`~forkmem.AccessDenied` for another user's process;
    :class:`~forkmem.ProcParseError` if the kernel file is garbled;
    :class:`~forkmem.InvalidArgument` for a pid that is not a positive int.
    """
    result: MemoryUsage = _backend().memory(_check_pid(pid))
    return result


def rss_breakdown(pid: int | None = None) -> RssBreakdown:
    """Return the cheap RSS split of process ``pid`` (default: the calling process).

    Reads only ``/proc/PID/status`` on Linux: microseconds, independent of heap size, and readable
    even for other users' processes. Errors as for :func:`memory`.
    """
    result: RssBreakdown = _backend().rss_breakdown(_check_pid(pid))
    return result
