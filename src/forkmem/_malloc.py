"""Give free heap memory back to the kernel with glibc's ``malloc_trim(0)``.

Freed memory left in malloc's arenas is still part of the parent's resident set; every page of
it a child later reuses becomes a private copy. Trimming before the fork returns what is free.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

__all__ = ["TrimResult", "glibc", "malloc_trim"]


class TrimResult(NamedTuple):
    """What ``malloc_trim(0)`` did: ``ran`` is False (with ``reason``) where it is unavailable."""

    ran: bool
    released: bool
    reason: str | None


_libc: Any = None


def glibc() -> Any:
    """The process's own C library when it is glibc (the only libc with malloc_trim), else None."""
    global _libc
    if _libc is not None:
        return _libc
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import platform

    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    _libc = libc
    return libc


def malloc_trim() -> TrimResult:
    """Call ``malloc_trim(0)``; never raises, says why it did not run instead."""
    libc = glibc()
    if libc is None:
        return TrimResult(False, False, "malloc_trim needs glibc on Linux")
    return TrimResult(True, bool(libc.malloc_trim(0)), None)
