"""Was this process forked from one that imported forkmem, from whom, and how many forks deep?

The state is a few module globals. A forked child inherits a copy of them, so the pid stored
there is, by construction, the pid of the process this one was forked from. forkmem's
after-fork trampoline (see `forkmem.hooks`) records each fork; a fork done in C that runs
no Python hooks is still noticed lazily, by the pid having changed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

__all__ = ["ForkInfo", "fork_info"]


@dataclass(frozen=True, slots=True)
class ForkInfo:
    """Where this process came from, as far as forkmem saw it."""

    pid: int
    """This process's pid."""
    forked: bool
    """True when this process is a fork of a process that had imported forkmem."""
    parent_pid: int | None
    """Pid of the process this one was forked from, taken at fork time (not ``os.getppid()``,
    which changes when the parent dies); ``None`` when not forked."""
    depth: int
    """Number of forks between this process and the first one that imported forkmem
    (0 in that process, 1 in its children, 2 in grandchildren...)."""
    via_hook: bool
    """True when forkmem's after-fork hooks ran in this process (``os.fork`` and
    multiprocessing's "fork"); False when the fork happened in C without them, or not at all."""
    forked_at: float | None
    """``time.time()`` when the fork was recorded; ``None`` when not forked."""


# Inherited by children through the copied memory: _pid is the pid the state describes.
_pid: int = os.getpid()
_parent_pid: int | None = None
_depth: int = 0
_via_hook: bool = False
_forked_at: float | None = None


def _needs_note() -> bool:
    return os.getpid() != _pid


def note_fork(*, via_hook: bool) -> None:
    """Record that this process is a fresh fork (once per process; later calls do nothing)."""
    global _pid, _parent_pid, _depth, _via_hook, _forked_at
    pid = os.getpid()
    if pid == _pid:
        return
    # The copied _pid is the process we were forked from.
    _parent_pid, _pid = _pid, pid
    _depth += 1
    _via_hook = via_hook
    _forked_at = time.time()


def fork_info() -> ForkInfo:
    """Describe this process's fork ancestry as forkmem observed it.

    >>> import os, forkmem
    >>> forkmem.fork_info().forked  # in the process that imported forkmem
    False
    """
    if _needs_note():
        # Forked in C without Python's at-fork hooks (or before they could run): the state we
        # inherited still names the parent.
        note_fork(via_hook=False)
    return ForkInfo(
        pid=_pid,
        forked=_depth > 0,
        parent_pid=_parent_pid,
        depth=_depth,
        via_hook=_via_hook,
        forked_at=_forked_at,
    )
