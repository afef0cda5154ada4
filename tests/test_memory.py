"""forkmem.memory / rss_breakdown against the kernel, with real forks and real /proc files."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys

import psutil
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
from forkmem import _backend_linux, _backend_psutil, _proc_read

pytestmark = pytest.mark.linux_only

MiB = 1024 * 1024
PAGE = mmap.PAGESIZE


def test_self_measurement_is_consistent() -> None:
    m = forkmem.memory()
    assert m.pid == os.getpid()
    assert m.source == "smaps_rollup"
    assert m.rss > 0
    assert m.pss is not None
    assert m.uss is not None
    assert m.uss <= m.pss <= m.rss
    assert m.shared == m.rss - m.uss  # no hugetlb pages in a test process
    assert m.private_clean is not None
    assert m.private_dirty is not None
    assert m.uss == m.private_clean + m.private_dirty
    assert isinstance(m.pss_dirty, int)  # kernel 6.x on this machine


def test_rss_breakdown_self_adds_up() -> None:
    r = forkmem.rss_breakdown()
    assert r.pid == os.getpid()
    assert r.source == "status"
    assert r.rss_anon is not None
    assert r.rss_file is not None
    assert r.rss_shmem is not None
    assert r.rss == r.rss_anon + r.rss_file + r.rss_shmem
    assert r.peak_rss is not None
    assert r.peak_rss >= r.rss


def test_rss_breakdown_sees_anon_growth() -> None:
    before = forkmem.rss_breakdown()
    with touched_map(32 * MiB):
        after = forkmem.rss_breakdown()
    assert after.rss_anon is not None
    assert before.rss_anon is not None
    assert after.rss_anon - before.rss_anon >= 31 * MiB


def test_memory_and_status_agree_on_rss() -> None:
    # Both come from the same mm counters; allow for pages touched between the two reads.
    m = forkmem.memory()
    r = forkmem.rss_breakdown()
    assert abs(m.rss - r.rss) < 2 * MiB


@pytest.mark.parametrize("n_mib", [4, 16])
def test_child_writes_show_as_private_dirty(n_mib: int) -> None:
    """Acceptance: a child writing N MiB of the parent's pages grows private_dirty by N MiB."""
    size = 32 * MiB
    # The parent's pages are resident and dirty before the fork.
    with touched_map(size) as buf, forked(write_on_command(buf, n_mib * MiB)) as child:
        assert child.recv() == "ready"
        parent_before = forkmem.memory()
        before = forkmem.memory(child.pid)
        os.write(child.write_fd, b"w")
        assert child.recv() == "written"
        after = forkmem.memory(child.pid)
        parent_after = forkmem.memory()
        child.send("exit")
    assert before.private_dirty is not None
    assert after.private_dirty is not None
    grown = after.private_dirty - before.private_dirty
    assert abs(grown - n_mib * MiB) <= 16 * PAGE, (grown, n_mib)
    # A copied page is private on both sides: the parent's copy is now its own.
    assert parent_before.private_dirty is not None
    assert parent_after.private_dirty is not None
    parent_grown = parent_after.private_dirty - parent_before.private_dirty
    assert abs(parent_grown - n_mib * MiB) <= 128 * PAGE, (parent_grown, n_mib)


# Runs in a fresh interpreter: a forked one would share its heap with pytest, and the anonymous
# pages must be shared by the measured pair only.
_PAIR_SCRIPT = """
import json, mmap, os, sys
from dataclasses import asdict
sys.path.insert(0, sys.argv[1])
import forkmem
from _memory_children import forked, sleeper
size = 96 * 2**20
buf = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
for off in range(0, size, mmap.PAGESIZE):
    buf[off] = 1
with forked(sleeper) as child:
    assert child.recv() == "ready"
    parent = forkmem.memory()
    kid = forkmem.memory(child.pid)
    status = forkmem.rss_breakdown()
    child.send("exit")
print(json.dumps({"size": size, "parent": asdict(parent), "kid": asdict(kid),
                  "status": asdict(status)}))
"""


def test_parent_and_untouched_child_pss_sum_to_parent_rss() -> None:
    """Acceptance: PSS splits shared pages, so parent + untouched child ~= parent RSS."""
    proc = subprocess.run(
        [sys.executable, "-c", _PAIR_SCRIPT, os.path.dirname(__file__)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(proc.stdout)
    size = got["size"]
    parent = forkmem.MemoryUsage(**got["parent"])
    kid = forkmem.MemoryUsage(**got["kid"])
    status = forkmem.RssBreakdown(**got["status"])
    assert parent.pss is not None
    assert kid.pss is not None
    assert kid.uss is not None
    assert kid.private_dirty is not None
    assert parent.pss_anon is not None
    assert kid.pss_anon is not None
    assert status.rss_anon is not None
    assert status.rss_file is not None
    # Anonymous pages are shared by these two processes only: their PSS adds up to the
    # parent's anonymous RSS plus the few pages the child has copied since fork.
    anon_total = parent.pss_anon + kid.pss_anon
    assert abs(anon_total - (status.rss_anon + kid.private_dirty)) <= 2 * MiB
    # Over all pages the sum can only fall short by library pages shared with other
    # processes on the machine, and exceed by the child's own pages. Had PSS been RSS, the
    # sum would be ~2x the parent's RSS.
    total = parent.pss + kid.pss
    assert parent.rss - status.rss_file - 2 * MiB <= total <= parent.rss + kid.uss + 2 * MiB
    # The buffer is split half-and-half.
    assert kid.pss >= size // 2 - 2 * MiB


def test_rollup_smaps_and_psutil_agree_on_a_still_child() -> None:
    with touched_map(16 * MiB), forked(sleeper) as child:
        assert child.recv() == "ready"
        rollup = _backend_linux.memory(child.pid)
        summed = _backend_linux.memory_from_smaps(child.pid)
        via_psutil = _backend_psutil.memory(child.pid)
        raw = psutil.Process(child.pid).memory_full_info()
        child.send("exit")
    assert summed.source == "smaps"
    assert via_psutil.source == "psutil"
    # The parent keeps running between the reads: each page it writes is copied and becomes
    # private to the child, so the split may shift by a few pages. The child may still be
    # faulting in the last pages on its way into the blocking read, so RSS moves a little too.
    assert abs(rollup.rss - summed.rss) <= 1 * MiB
    for name in ("uss", "shared_clean", "shared_dirty", "private_clean", "private_dirty"):
        assert abs(getattr(rollup, name) - getattr(summed, name)) <= 4 * MiB, name
    # The rollup rounds PSS once, smaps once per mapping (<1 KiB each).
    mappings = len(psutil.Process(os.getpid()).memory_maps(grouped=False)) + 64
    assert rollup.pss is not None
    assert summed.pss is not None
    assert abs(rollup.pss - summed.pss) <= mappings * 1024 + 4 * MiB
    assert summed.pss_anon is None  # smaps has no per-kind PSS
    assert via_psutil.uss is not None
    assert via_psutil.pss is not None
    assert abs(via_psutil.uss - rollup.uss) <= 4 * MiB
    assert abs(via_psutil.pss - rollup.pss) <= 4 * MiB
    # psutil's RSS comes from statm, the kernel's batched per-CPU counters, not the page walk.
    assert abs(via_psutil.rss - rollup.rss) <= 1 * MiB
    assert abs(raw.uss - rollup.uss) <= 4 * MiB
    assert via_psutil.shared_clean is None


def test_smaps_fallback_is_used_without_rollup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_proc_read, "_has_rollup", False)
    m = forkmem.memory()
    assert m.source == "smaps"
    assert m.pss_anon is None
    assert m.pss is not None
    assert m.rss > 0


def test_reaped_pid_is_no_such_process() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    reap(pid)
    with pytest.raises(forkmem.NoSuchProcess, match=f"no process {pid}") as info:
        forkmem.memory(pid)
    assert info.value.pid == pid
    assert isinstance(info.value, ProcessLookupError)
    with pytest.raises(forkmem.NoSuchProcess):
        forkmem.rss_breakdown(pid)


def test_zombie_is_no_such_process() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        wait_zombie(pid)
        with pytest.raises(forkmem.NoSuchProcess, match="zombie"):
            forkmem.memory(pid)
        with pytest.raises(forkmem.NoSuchProcess, match="zombie"):
            forkmem.rss_breakdown(pid)
        with pytest.raises(forkmem.NoSuchProcess, match="zombie"):
            _backend_linux.memory_from_smaps(pid)
        with pytest.raises(forkmem.NoSuchProcess, match="zombie"):
            _backend_psutil.memory(pid)
    finally:
        reap(pid)


def _kernel_thread_pid() -> int | None:
    for pid in (2, 3):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                flags = int(f.read().rpartition(b")")[2].split()[6])
        except (OSError, ValueError, IndexError):
            continue
        if flags & 0x00200000:
            return pid
    return None


def test_kernel_thread_is_no_such_process() -> None:
    pid = _kernel_thread_pid()
    if pid is None:
        pytest.skip("no kernel thread visible in this pid namespace")
    with pytest.raises(forkmem.NoSuchProcess, match="kernel thread"):
        forkmem.memory(pid)
    with pytest.raises(forkmem.NoSuchProcess, match="kernel thread"):
        forkmem.rss_breakdown(pid)


def _unprivileged_probe(pipe: Pipe) -> None:
    """Drop to uid/gid 65534, then try to measure PID 1 and the (root) parent."""
    parent = os.getppid()
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    results: dict[str, str] = {}
    for label, pid in (("init", 1), ("parent", parent)):
        try:
            forkmem.memory(pid)
            results[label] = "ok"
        except forkmem.AccessDenied as exc:
            ok = isinstance(exc, PermissionError) and exc.pid == pid and exc.path is not None
            results[label] = "AccessDenied" if ok else "AccessDenied-malformed"
        except Exception as exc:
            results[label] = type(exc).__name__
        try:
            psutil.Process(pid).memory_full_info()
            results[label + "-psutil"] = "ok"
        except psutil.AccessDenied:
            results[label + "-psutil"] = "psutil.AccessDenied"
        except Exception as exc:
            results[label + "-psutil"] = type(exc).__name__
        # status stays world-readable, so the fast tier still works.
        try:
            results[label + "-fast"] = "ok" if forkmem.rss_breakdown(pid).rss > 0 else "zero"
        except Exception as exc:
            results[label + "-fast"] = type(exc).__name__
    pipe.send(results)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid() to an unprivileged uid")
def test_unprivileged_child_gets_access_denied() -> None:
    """Acceptance: a child that setuid()s to nobody and measures PID 1 gets AccessDenied."""
    with forked(_unprivileged_probe) as child:
        results = child.recv()
    assert results == {
        "init": "AccessDenied",
        "init-psutil": "psutil.AccessDenied",
        "init-fast": "ok",
        "parent": "AccessDenied",
        "parent-psutil": "psutil.AccessDenied",
        "parent-fast": "ok",
    }


_BAD_PIDS = [0, -1, True, "1", 1.0, 2**31, 2**64, 10**5000, -(10**5000)]


@pytest.mark.parametrize("bad", _BAD_PIDS, ids=[f"bad{i}" for i in range(len(_BAD_PIDS))])
def test_bad_pid_is_invalid_argument(bad: object) -> None:
    # A pid too large for pid_t used to reach f"/proc/{pid}" and raise a raw ValueError
    # (int-to-str digit limit) or a NoSuchProcess; every entry point shares one validator.
    calls = [
        forkmem.memory,
        forkmem.rss_breakdown,
        forkmem.memory_tree,
        lambda pid: forkmem.cow_report(pid, os.getpid()),
        lambda pid: forkmem.cow_report(os.getpid(), pid),
    ]
    for call in calls:
        with pytest.raises(forkmem.InvalidArgument, match="pid must be"):
            call(bad)


def test_cow_report_needs_two_pids() -> None:
    with pytest.raises(forkmem.InvalidArgument, match="pid must be an int,"):
        forkmem.cow_report(None, os.getpid())  # type: ignore[arg-type]


def test_psutil_backend_errors_are_typed() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    reap(pid)
    with pytest.raises(forkmem.NoSuchProcess):
        _backend_psutil.memory(pid)
    with pytest.raises(forkmem.NoSuchProcess):
        _backend_psutil.rss_breakdown(pid)
    r = _backend_psutil.rss_breakdown(os.getpid())
    assert r.source == "psutil"
    assert r.rss > 0


def test_results_are_frozen() -> None:
    m = forkmem.memory()
    with pytest.raises(AttributeError):
        m.rss = 0  # type: ignore[misc]
