"""forkmem.cgroup_memory on this machine and on crafted v1/v2 trees (namespaces, containers)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import forkmem
from forkmem.cgroup import _cgroup_memory, _parse_mountinfo, _parse_proc_cgroup

V2_STAT = "anon 1000\nfile 2000\nkernel 300\nslab 40\nshmem 5\nsock 0\n"
V1_STAT = (
    "cache 10\nrss 20\nshmem 1\nhierarchical_memory_limit {hier}\n"
    "total_cache 1000\ntotal_rss 2000\ntotal_shmem 5\n"
)
V1_UNLIMITED = 9223372036854771712


def _mountinfo(*mounts: tuple[str, str, str, str]) -> str:
    lines = [
        "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw",
        "25 22 0:5 / /proc rw,nosuid - proc proc rw",
    ]
    for i, (root, point, fstype, opts) in enumerate(mounts):
        lines.append(f"{30 + i} 22 0:{40 + i} {root} {point} rw,nosuid - {fstype} cgroup {opts}")
    return "\n".join(lines) + "\n"


def _write(base: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        path = base / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)


def _v2_dir(base: Path, directory: str, *, current: int, limit: str, peak: int | None) -> None:
    files = {
        f"{directory}/memory.current": f"{current}\n",
        f"{directory}/memory.max": f"{limit}\n",
        f"{directory}/memory.stat": V2_STAT,
    }
    if peak is not None:
        files[f"{directory}/memory.peak"] = f"{peak}\n"
    _write(base, files)


def _proc(base: Path, cgroup: str, mountinfo: str) -> str:
    _write(base, {"proc/self/cgroup": cgroup, "proc/self/mountinfo": mountinfo})
    return str(base / "proc/self")


def test_v2_inside_a_cgroup_namespace(tmp_path: Path) -> None:
    # Inside the namespace the process sees "/" and the mount root is "/".
    proc = _proc(tmp_path, "0::/\n", _mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw")))
    _v2_dir(tmp_path, "sys/fs/cgroup", current=5000, limit="1048576", peak=7000)
    cg = _cgroup_memory(proc, str(tmp_path))
    assert cg is not None
    assert cg.version == 2
    assert cg.cgroup == "/"
    assert cg.directory == str(tmp_path / "sys/fs/cgroup")
    assert (cg.current, cg.peak, cg.limit, cg.headroom) == (5000, 7000, 1048576, 1048576 - 5000)
    assert (cg.anon, cg.file, cg.kernel, cg.slab, cg.shmem) == (1000, 2000, 300, 40, 5)
    assert cg.stat["sock"] == 0
    with pytest.raises(TypeError):
        cg.stat["anon"] = 1  # type: ignore[index]


def test_v2_nested_limit_comes_from_an_ancestor(tmp_path: Path) -> None:
    proc = _proc(
        tmp_path,
        "0::/kubepods/pod1/ctr\n",
        _mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw,nsdelegate")),
    )
    _v2_dir(tmp_path, "sys/fs/cgroup/kubepods", current=9, limit="max", peak=None)
    _v2_dir(tmp_path, "sys/fs/cgroup/kubepods/pod1", current=9, limit="4096", peak=None)
    _v2_dir(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr", current=7, limit="max", peak=None)
    cg = _cgroup_memory(proc, str(tmp_path))
    assert cg is not None
    assert cg.cgroup == "/kubepods/pod1/ctr"
    assert cg.limit == 4096
    assert cg.peak is None  # kernel < 5.19 has no memory.peak


def test_v2_unlimited(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "0::/a\n", _mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw")))
    _v2_dir(tmp_path, "sys/fs/cgroup/a", current=7, limit="max", peak=8)
    cg = _cgroup_memory(proc, str(tmp_path))
    assert cg is not None
    assert cg.limit is None
    assert cg.headroom is None


def test_v2_container_mounting_its_own_subtree(tmp_path: Path) -> None:
    # No cgroup namespace: /proc/self/cgroup shows the host path, the mount root matches it.
    proc = _proc(
        tmp_path,
        "0::/docker/abc\n",
        _mountinfo(("/docker/abc", "/sys/fs/cgroup", "cgroup2", "rw")),
    )
    _v2_dir(tmp_path, "sys/fs/cgroup", current=11, limit="2048", peak=12)
    cg = _cgroup_memory(proc, str(tmp_path))
    assert cg is not None
    assert cg.directory == str(tmp_path / "sys/fs/cgroup")
    assert cg.limit == 2048


def test_v2_root_cgroup_is_none(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "0::/\n", _mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw")))
    _write(tmp_path, {"sys/fs/cgroup/memory.stat": V2_STAT})  # the root has no memory.current
    assert _cgroup_memory(proc, str(tmp_path)) is None


def test_v2_outside_the_namespace_is_none(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "0::/../other\n", _mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw")))
    _v2_dir(tmp_path, "sys/fs/cgroup", current=1, limit="max", peak=1)
    _v2_dir(tmp_path, "sys/other", current=1, limit="max", peak=1)
    assert _cgroup_memory(proc, str(tmp_path)) is None


def test_v2_mountpoint_with_escaped_space(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "0::/a\n", _mountinfo(("/", "/my\\040cgroups", "cgroup2", "rw")))
    _v2_dir(tmp_path, "my cgroups/a", current=3, limit="max", peak=4)
    cg = _cgroup_memory(proc, str(tmp_path))
    assert cg is not None
    assert cg.directory == str(tmp_path / "my cgroups/a")


def test_v1_memory_controller_wins_on_a_hybrid_host(tmp_path: Path) -> None:
    proc = _proc(
        tmp_path,
        "9:name=systemd:/\n4:memory:/app/x\n3:cpu,cpuacct:/\n0::/\n",
        _mountinfo(
            ("/", "/sys/fs/cgroup/cpu,cpuacct", "cgroup", "rw,cpu,cpuacct"),
            ("/", "/sys/fs/cgroup/memory", "cgroup", "rw,memory"),
            ("/", "/sys/fs/cgroup/unified", "cgroup2", "rw"),
        ),
    )
    d = "sys/fs/cgroup/memory/app/x"
    _write(
        tmp_path,
        {
            f"{d}/memory.usage_in_bytes": "3000\n",
            f"{d}/memory.max_usage_in_bytes": "4000\n",
            f"{d}/memory.limit_in_bytes": f"{V1_UNLIMITED}\n",
            f"{d}/memory.kmem.usage_in_bytes": "77\n",
            f"{d}/memory.stat": V1_STAT.format(hier=65536),
        },
    )
    _v2_dir(tmp_path, "sys/fs/cgroup/unified", current=1, limit="max", peak=1)
    cg = _cgroup_memory(proc, str(tmp_path))
    assert cg is not None
    assert cg.version == 1
    assert cg.cgroup == "/app/x"
    assert (cg.current, cg.peak) == (3000, 4000)
    assert cg.limit == 65536  # a parent's limit, seen through hierarchical_memory_limit
    assert (cg.anon, cg.file, cg.shmem, cg.kernel, cg.slab) == (2000, 1000, 5, 77, None)


def test_v1_unlimited(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "4:memory:/\n", _mountinfo(("/", "/cg/memory", "cgroup", "rw,memory")))
    _write(
        tmp_path,
        {
            "cg/memory/memory.usage_in_bytes": "3000\n",
            "cg/memory/memory.limit_in_bytes": f"{V1_UNLIMITED}\n",
            "cg/memory/memory.stat": V1_STAT.format(hier=V1_UNLIMITED),
        },
    )
    cg = _cgroup_memory(proc, str(tmp_path))
    assert cg is not None
    assert cg.limit is None
    assert cg.peak is None
    assert cg.kernel is None


def test_no_memory_cgroup_at_all(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "3:cpu:/\n", _mountinfo(("/", "/cg/cpu", "cgroup", "rw,cpu")))
    assert _cgroup_memory(proc, str(tmp_path)) is None
    assert _cgroup_memory(str(tmp_path / "nowhere"), str(tmp_path)) is None


def test_not_mounted_is_none(tmp_path: Path) -> None:
    proc = _proc(tmp_path, "0::/a\n", _mountinfo())
    assert _cgroup_memory(proc, str(tmp_path)) is None


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("proc/self/cgroup", "garbage\n"),
        ("proc/self/mountinfo", "1 2 3\n"),
        ("sys/fs/cgroup/a/memory.stat", "anon lots\n"),
        ("sys/fs/cgroup/a/memory.current", "12k\n"),
    ],
)
def test_garbled_files_name_the_file(tmp_path: Path, name: str, content: str) -> None:
    proc = _proc(tmp_path, "0::/a\n", _mountinfo(("/", "/sys/fs/cgroup", "cgroup2", "rw")))
    _v2_dir(tmp_path, "sys/fs/cgroup/a", current=1, limit="max", peak=1)
    _write(tmp_path, {name: content})
    with pytest.raises(forkmem.ProcParseError) as info:
        _cgroup_memory(proc, str(tmp_path))
    assert info.value.path == str(tmp_path / name)


@pytest.mark.linux_only
def test_this_machine() -> None:
    cg = forkmem.cgroup_memory()
    if cg is None:
        pytest.skip("this process is not in a memory cgroup")
    assert cg.version in (1, 2)
    assert cg.current > 0
    procs = Path(cg.directory, "cgroup.procs").read_text().split()
    assert str(os.getpid()) in procs
    assert cg.anon is not None
    assert cg.file is not None
    assert cg.peak is None or cg.peak >= cg.current * 0.5


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(max_size=300))
def test_fuzz_cgroup_parsers(text: str) -> None:
    for parser in (_parse_proc_cgroup, _parse_mountinfo):
        error: forkmem.ProcParseError | None = None
        try:
            parser(text, "/proc/self/x")
        except forkmem.ProcParseError as exc:
            error = exc
        assert error is None or error.path == "/proc/self/x"


def test_cgroup_of_another_process_matches_its_own_view() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        mine, theirs = forkmem.cgroup_memory(), forkmem.cgroup_memory(child.pid)
        assert (mine is None) == (theirs is None)
        if mine is not None and theirs is not None:
            assert (theirs.cgroup, theirs.directory) == (mine.cgroup, mine.directory)
    finally:
        child.kill()
        child.wait(10)
    with pytest.raises(forkmem.NoSuchProcess):
        forkmem.cgroup_memory(child.pid)
