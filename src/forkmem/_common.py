"""Result types of the memory readers, shared by the front module and its backends (a leaf).

Kept apart from `forkmem.usage` so the platform backends can build them without importing
the module that picks the backend.
"""

from __future__ import annotations

from dataclasses import dataclass

from forkmem._pid import PID_MAX, check_pid

__all__ = ["PID_MAX", "MemoryUsage", "RssBreakdown", "check_pid"]


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


# pid_t is a signed 32-bit int on every platform psutil supports; anything larger is not a
# process id, and formatting a huge int into "/proc/{pid}" would itself raise a raw ValueError.
