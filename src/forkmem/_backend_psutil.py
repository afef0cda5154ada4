"""Portable backend: psutil's figures where ``/proc`` is unavailable (macOS, Windows, BSD).

Fields psutil cannot provide on the platform are ``None``. On Linux psutil reads the same
``smaps_rollup`` file, so this backend is only the fallback, and a cross-check in the tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from forkmem._common import MemoryUsage, RssBreakdown
from forkmem.errors import AccessDenied, NoSuchProcess, UnsupportedPlatform

if TYPE_CHECKING:
    from collections.abc import Callable

    import psutil

__all__ = ["memory", "memory_many", "rss_breakdown"]

_T = TypeVar("_T")


def _call(pid: int, what: str, fn: Callable[[], _T]) -> _T:
    import psutil

    try:
        return fn()
    except psutil.ZombieProcess:
        raise NoSuchProcess(f"process {pid} is a zombie (exited, not reaped)", pid=pid) from None
    except psutil.NoSuchProcess:
        raise NoSuchProcess(f"no process {pid}", pid=pid) from None
    except psutil.AccessDenied:
        raise AccessDenied(f"no permission to read the {what} of process {pid}", pid=pid) from None


def _check_zombie(pid: int, proc: psutil.Process, rss: int) -> None:
    # psutil reports a zombie's memory as all zeros rather than raising.
    if rss == 0 and _call(pid, "status", proc.status) == "zombie":
        raise NoSuchProcess(f"process {pid} is a zombie (exited, not yet reaped)", pid=pid)


def _opt(info: object, name: str) -> int | None:
    value = getattr(info, name, None)
    return int(value) if value is not None else None


def memory(pid: int) -> MemoryUsage:
    """Return `MemoryUsage` from ``psutil.Process(pid).memory_full_info()``."""
    import psutil

    proc = _call(pid, "memory", lambda: psutil.Process(pid))
    info = _call(pid, "memory", proc.memory_full_info)
    _check_zombie(pid, proc, int(info.rss))
    uss = _opt(info, "uss")
    if uss is None:
        raise UnsupportedPlatform("psutil reports no USS on this platform; forkmem cannot measure")
    return MemoryUsage(
        pid=pid,
        rss=int(info.rss),
        pss=_opt(info, "pss"),
        uss=uss,
        shared_clean=None,
        shared_dirty=None,
        private_clean=None,
        private_dirty=None,
        swap=_opt(info, "swap"),
        swap_pss=None,
        pss_anon=None,
        pss_file=None,
        pss_shmem=None,
        pss_dirty=None,
        source="psutil",
    )


def memory_many(pids: list[int]) -> list[MemoryUsage | NoSuchProcess | AccessDenied]:
    """`memory()` for many pids, with per-pid errors returned in place of results."""
    out: list[MemoryUsage | NoSuchProcess | AccessDenied] = []
    for pid in pids:
        try:
            out.append(memory(pid))
        except (NoSuchProcess, AccessDenied) as exc:
            out.append(exc)
    return out


def rss_breakdown(pid: int) -> RssBreakdown:
    """Return [`RssBreakdown`][forkmem.RssBreakdown] from ``psutil.Process(pid).memory_info()``."""
    import psutil

    proc = _call(pid, "memory", lambda: psutil.Process(pid))
    info = _call(pid, "memory", proc.memory_info)
    _check_zombie(pid, proc, int(info.rss))
    return RssBreakdown(
        pid=pid,
        rss=int(info.rss),
        rss_anon=None,
        rss_file=None,
        rss_shmem=None,
        swap=None,
        peak_rss=_opt(info, "peak_wset"),
        source="psutil",
    )
