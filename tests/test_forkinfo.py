"""fork_info(): fork ancestry as forkmem saw it, with real forks."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from typing import TYPE_CHECKING, Any

import pytest

import forkmem
from _forking import run_forked, run_in_process
from forkmem import forkinfo

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.linux_only

CHILD_TIMEOUT = 30.0


def in_child(fn: Callable[[], Any], fork: Callable[[], int] = os.fork) -> Any:
    return run_forked(fn, timeout=CHILD_TIMEOUT, fork=fork)


def _info() -> dict[str, Any]:
    i = forkmem.fork_info()
    return {
        "pid": i.pid,
        "forked": i.forked,
        "parent_pid": i.parent_pid,
        "depth": i.depth,
        "via_hook": i.via_hook,
        "forked_at": i.forked_at,
    }


def test_this_process_relative_to_its_own_state() -> None:
    info = forkmem.fork_info()
    assert info.pid == os.getpid()
    assert info.forked is (info.depth > 0)
    if not info.forked:
        assert info.parent_pid is None
        assert info.forked_at is None


def test_child_and_grandchild() -> None:
    me = forkmem.fork_info()
    child = in_child(lambda: {"self": _info(), "grandchild": in_child(_info)})
    assert child["self"]["forked"] is True
    assert child["self"]["parent_pid"] == os.getpid()
    assert child["self"]["depth"] == me.depth + 1
    assert child["self"]["via_hook"] is True
    assert child["self"]["forked_at"] >= time.time() - CHILD_TIMEOUT
    grandchild = child["grandchild"]
    assert grandchild["parent_pid"] == child["self"]["pid"]
    assert grandchild["depth"] == me.depth + 2
    assert grandchild["pid"] not in (os.getpid(), child["self"]["pid"])


def _libc_fork() -> int:
    # A fork done in C, like uWSGI's: Python's at-fork hooks do not run.
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    return int(libc.fork())


def test_fork_in_c_is_noticed_lazily_and_run_fork_hooks_fires_child_hooks() -> None:
    calls: list[str] = []
    hook = forkmem.at_fork(after_in_child=lambda: calls.append("child"), name="c-fork")
    try:

        def child() -> dict[str, Any]:
            info = _info()
            hooks_before = list(calls)
            forkmem.run_fork_hooks("after_in_child")
            return {"info": info, "before": hooks_before, "after": list(calls), "again": _info()}

        out = in_child(child, fork=_libc_fork)
    finally:
        hook.remove()
    assert out["info"]["forked"] is True
    assert out["info"]["via_hook"] is False
    assert out["info"]["parent_pid"] == os.getpid()
    assert out["before"] == []
    assert out["after"] == ["child"]
    assert out["again"]["depth"] == out["info"]["depth"]  # counted once


def test_run_fork_hooks_in_a_python_fork_child_does_not_count_twice() -> None:
    def child() -> tuple[int, int]:
        depth = forkmem.fork_info().depth
        forkmem.run_fork_hooks("after_in_child")
        return depth, forkmem.fork_info().depth

    first, second = in_child(child)
    assert first == second == forkmem.fork_info().depth + 1


def _mp_report(conn: Any) -> None:
    conn.send(_info())
    conn.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_start_methods(method: str) -> None:
    info, _exitcode = run_in_process(method, _mp_report, timeout=CHILD_TIMEOUT)
    if method == "fork":
        assert info["forked"] is True
        assert info["parent_pid"] == os.getpid()
    else:
        # A spawned interpreter imports forkmem afresh: it was not forked.
        assert info["forked"] is False
        assert info["depth"] == 0


def test_state_pid_tracks_this_process() -> None:
    forkmem.fork_info()
    assert not forkinfo._needs_note()
