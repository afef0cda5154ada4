"""forkmem.memory_tree and cow_report on real process trees."""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os

import pytest

import forkmem
from _memory_children import (
    Pipe,
    forked,
    reap,
    sleeper,
    touched_map,
    wait_zombie,
    write_on_command,
)

pytestmark = pytest.mark.linux_only

MiB = 1024 * 1024
PAGE = mmap.PAGESIZE


def test_tree_of_children_and_grandchild() -> None:
    size = 32 * MiB
    with touched_map(size) as buf, contextlib.ExitStack() as stack:

        def with_grandchild(pipe: Pipe) -> None:
            with forked(sleeper) as grandchild:
                grandchild.recv()
                pipe.send(grandchild.pid)
                pipe.recv()

        kids = [stack.enter_context(forked(sleeper)) for _ in range(3)]
        middle = stack.enter_context(forked(with_grandchild))
        for kid in kids:
            assert kid.recv() == "ready"
        grandchild_pid = middle.recv()
        tree = forkmem.memory_tree()
        solo = forkmem.memory_tree(kids[0].pid)
        assert buf[0] == 1
    pids = [p.pid for p in tree.processes]
    assert pids[0] == os.getpid() == tree.root
    # A subset: children other tests may have left behind belong to this process too.
    assert {k.pid for k in kids} | {middle.pid, grandchild_pid} <= set(pids[1:])
    assert tree.skipped == 0
    assert tree.denied == 0
    assert tree.total_rss == sum(p.rss for p in tree.processes)
    assert tree.total_pss == sum(p.pss or 0 for p in tree.processes)
    assert tree.total_uss == sum(p.uss or 0 for p in tree.processes)
    assert tree.total_pss is not None
    assert tree.shared_savings == tree.total_rss - tree.total_pss
    # Five processes map the parent's 32 MiB; PSS counts it once, RSS five times.
    assert tree.shared_savings >= 4 * size * 0.9
    assert tree.total_pss < tree.total_rss
    assert [p.pid for p in solo.processes] == [kids[0].pid]


def test_exited_children_are_skipped_not_errors() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        wait_zombie(pid)
        tree = forkmem.memory_tree()
    finally:
        reap(pid)
    assert tree.skipped >= 1
    assert pid not in [p.pid for p in tree.processes]


def _unprivileged_tree(pipe: Pipe) -> None:
    """As uid 65534, own a non-dumpable child: the walk must count it as denied."""
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)

    def undumpable(inner: Pipe) -> None:
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4 -> 0
        inner.send("ready")
        inner.recv()

    with forked(undumpable) as child:
        child.recv()
        tree = forkmem.memory_tree()
        pipe.send({"denied": tree.denied, "n": len(tree.processes), "skipped": tree.skipped})
        child.send("exit")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid() to an unprivileged uid")
def test_unreadable_children_are_counted_as_denied() -> None:
    with forked(_unprivileged_tree) as child:
        assert child.recv() == {"denied": 1, "n": 1, "skipped": 0}


def test_missing_root_is_no_such_process() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    reap(pid)
    with pytest.raises(forkmem.NoSuchProcess):
        forkmem.memory_tree(pid)


def test_cow_report_tracks_child_copies() -> None:
    size = 64 * MiB
    with touched_map(size) as buf, forked(write_on_command(buf, 32 * MiB)) as child:
        assert child.recv() == "ready"
        fresh = forkmem.cow_report(os.getpid(), child.pid)
        os.write(child.write_fd, b"w")
        assert child.recv() == "written"
        parent = forkmem.memory()
        copied = forkmem.cow_report(parent, forkmem.memory(child.pid))
        from_tree = forkmem.memory_tree().cow_reports()
    assert fresh.child_pid == copied.child_pid
    assert fresh.parent_pid == os.getpid()
    assert fresh.shared == fresh.child_rss - fresh.child_uss
    # Right after fork the child shares nearly all of the parent (64 MiB of ~80-100 MiB).
    assert fresh.efficiency > 0.6
    assert copied.private_dirty - fresh.private_dirty >= 31 * MiB
    drop = fresh.efficiency - copied.efficiency
    expected = 32 * MiB / parent.rss
    assert abs(drop - expected) < 0.05, (drop, expected)
    (ours,) = [r for r in from_tree if r.child_pid == child.pid]
    assert ours.private_dirty >= 32 * MiB


def test_cow_report_rejects_a_backend_without_the_split() -> None:
    m = forkmem.memory()
    fake_psutil = forkmem.MemoryUsage(
        pid=m.pid,
        rss=m.rss,
        pss=None,
        uss=m.uss,
        shared_clean=None,
        shared_dirty=None,
        private_clean=None,
        private_dirty=None,
        swap=None,
        swap_pss=None,
        pss_anon=None,
        pss_file=None,
        pss_shmem=None,
        pss_dirty=None,
        source="psutil",
    )
    with pytest.raises(forkmem.UnsupportedPlatform):
        forkmem.cow_report(m, fake_psutil)


def test_tree_on_the_smaps_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    from forkmem import _proc_read

    monkeypatch.setattr(_proc_read, "_has_rollup", False)
    with forked(sleeper) as child:
        assert child.recv() == "ready"
        tree = forkmem.memory_tree()
    assert child.pid in [p.pid for p in tree.processes]
    assert {p.source for p in tree.processes} == {"smaps"}
    assert tree.total_pss is not None
    assert tree.total_pss < tree.total_rss
