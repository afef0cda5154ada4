"""The calling process's memory cgroup: usage, peak, limit and the kernel's breakdown.

Container memory is what the OOM killer and the orchestrator look at, and it includes what no
process's PSS shows (page cache, slab, kernel stacks). [`cgroup_memory()`][forkmem.cgroup_memory]
finds the process's cgroup through ``/proc/self/cgroup`` and ``/proc/self/mountinfo`` (so cgroup
namespaces and containers that mount only their own subtree work) and reads cgroup v2 or v1 files.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

from forkmem._common import check_pid
from forkmem.errors import AccessDenied, NoSuchProcess, ProcParseError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["CgroupMemory", "cgroup_memory"]

# cgroup v1 reports "no limit" as PAGE_COUNTER_MAX pages (2**63 - 4096 on 4 KiB pages).
_V1_UNLIMITED = 1 << 60


@dataclass(frozen=True, slots=True)
class CgroupMemory:
    """Memory of the calling process's cgroup, in bytes.

    - ``version``: 2 (unified hierarchy) or 1 (the ``memory`` controller of cgroup v1).
    - ``cgroup``: the cgroup path as ``/proc/self/cgroup`` shows it; ``directory``: where its
      files were read.
    - ``current``: usage now (v2 ``memory.current``, v1 ``memory.usage_in_bytes``), page cache
      and, on v2, kernel memory included.
    - ``peak``: the high-water mark (v2 ``memory.peak``, Linux 5.19+; v1
      ``memory.max_usage_in_bytes``), ``None`` where the kernel has none.
    - ``limit``: the effective hard limit, the smallest ``memory.max`` of this cgroup and its
      ancestors visible in the mount (v1: ``limit_in_bytes`` and ``hierarchical_memory_limit``);
      ``None`` when unlimited.
    - ``anon``, ``file``, ``kernel``, ``slab``, ``shmem``: from ``memory.stat`` (v1 uses the
      hierarchical ``total_rss``, ``total_cache``, ``total_shmem`` and
      ``memory.kmem.usage_in_bytes``); ``None`` where this kernel does not report one.
    - ``stat``: every ``memory.stat`` counter, read-only.
    """

    version: int
    cgroup: str
    directory: str
    current: int
    peak: int | None
    limit: int | None
    anon: int | None
    file: int | None
    kernel: int | None
    slab: int | None
    shmem: int | None
    stat: Mapping[str, int]

    @property
    def headroom(self) -> int | None:
        """Bytes left before the limit (``limit - current``), ``None`` when unlimited."""
        return None if self.limit is None else self.limit - self.current


def cgroup_memory(pid: int | None = None) -> CgroupMemory | None:
    """Return the memory cgroup of process ``pid`` (default: the caller), or ``None`` outside one.

    ``None`` also when the cgroup filesystem is not mounted where this process can see it, or
    on platforms without cgroups. Garbled kernel files raise
    [`ProcParseError`][forkmem.ProcParseError]; a ``pid`` that does not exist raises
    [`NoSuchProcess`][forkmem.NoSuchProcess].
    """
    if pid is None:
        return _cgroup_memory("/proc/self", "")
    proc = f"/proc/{check_pid(pid)}"
    result = _cgroup_memory(proc, "")
    if result is None and not os.path.exists(proc):
        raise NoSuchProcess(f"no process {pid}", pid=pid)
    return result


def _cgroup_memory(proc_self: str, fs_root: str) -> CgroupMemory | None:
    """`cgroup_memory()` with injectable roots (tests use crafted trees in a tmp dir).

    ``proc_self`` replaces ``/proc/self``; ``fs_root`` is prefixed to every mount point.
    """
    cgroup_file = os.path.join(proc_self, "cgroup")
    mountinfo_file = os.path.join(proc_self, "mountinfo")
    cgroup_text = _read_text(cgroup_file)
    mountinfo_text = _read_text(mountinfo_file)
    if cgroup_text is None or mountinfo_text is None:
        return None
    memberships = _parse_proc_cgroup(cgroup_text, cgroup_file)
    mounts = _parse_mountinfo(mountinfo_text, mountinfo_file)
    if "memory" in memberships:
        version, path = 1, memberships["memory"]
        candidates = [m for m in mounts if m[2] == "cgroup" and "memory" in m[3]]
    elif "" in memberships:
        version, path = 2, memberships[""]
        candidates = [m for m in mounts if m[2] == "cgroup2"]
    else:
        return None
    for mount_root, mountpoint, _, _ in candidates:
        directory = _resolve(fs_root + mountpoint, mount_root, path)
        if directory is not None and os.path.isdir(directory):
            base = os.path.normpath(fs_root + mountpoint)
            if version == 2:
                return _read_v2(path, directory, base)
            return _read_v1(path, directory)
    return None


def _read_text(path: str) -> str | None:
    """File content, or ``None`` when it does not exist; decoding never fails."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise AccessDenied(f"no permission to read {path}", path=path) from None
        if exc.errno == errno.ENODEV:  # e.g. memory.peak on a cgroup that has none
            return None
        raise
    return data.decode("utf-8", "surrogateescape")


def _parse_proc_cgroup(text: str, path: str) -> dict[str, str]:
    """Map each controller (``""`` for the v2 line ``0::/path``) to the process's cgroup path."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[0].isdigit() or not parts[2].startswith("/"):
            raise ProcParseError(f"unexpected line {line[:80]!r}", path=path)
        hierarchy, controllers, cgroup_path = parts
        if hierarchy == "0" and controllers == "":
            out[""] = cgroup_path
            continue
        for controller in controllers.split(","):
            out.setdefault(controller, cgroup_path)
    return out


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        chunk = field[i + 1 : i + 4]
        if field[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _parse_mountinfo(text: str, path: str) -> list[tuple[str, str, str, frozenset[str]]]:
    """Return ``(root, mountpoint, fstype, superoptions)`` for every cgroup mount."""
    mounts = []
    for line in text.splitlines():
        if not line:
            continue
        left, sep, right = line.partition(" - ")
        fields = left.split(" ")
        tail = right.split(" ")
        if not sep or len(fields) < 6 or len(tail) < 3:
            raise ProcParseError(f"unexpected line {line[:80]!r}", path=path)
        fstype = tail[0]
        if fstype in ("cgroup", "cgroup2"):
            options = frozenset(tail[2].split(","))
            mounts.append((_unescape(fields[3]), _unescape(fields[4]), fstype, options))
    return mounts


def _resolve(mountpoint: str, mount_root: str, cgroup_path: str) -> str | None:
    """Directory of ``cgroup_path`` under a mount of the hierarchy's ``mount_root``.

    ``None`` when the cgroup is not inside what is mounted (e.g. a path outside the cgroup
    namespace, shown as ``/../..``).
    """
    if mount_root != "/":
        if cgroup_path != mount_root and not cgroup_path.startswith(mount_root + "/"):
            return None
        cgroup_path = cgroup_path[len(mount_root) :]
    parts = [p for p in cgroup_path.split("/") if p]
    if ".." in parts or "." in parts:
        return None
    return os.path.join(mountpoint, *parts)


def _read_int(directory: str, name: str) -> int | None:
    """The number in a cgroup file; ``None`` when it is missing or says ``max`` (no limit)."""
    path = os.path.join(directory, name)
    text = _read_text(path)
    if text is None:
        return None
    value = text.strip()
    if value == "max":
        return None
    if not value.isdigit() or not value.isascii():
        raise ProcParseError(f"expected a number, got {value[:40]!r}", path=path)
    return int(value)


def _read_stat(directory: str) -> dict[str, int]:
    path = os.path.join(directory, "memory.stat")
    text = _read_text(path)
    if text is None:
        raise ProcParseError("memory.stat is missing (not a memory cgroup?)", path=path)
    stat: dict[str, int] = {}
    for line in text.splitlines():
        if not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not parts[1].isdigit() or not parts[1].isascii():
            raise ProcParseError(f"unexpected line {line[:80]!r}", path=path)
        stat[parts[0]] = int(parts[1])
    return stat


def _read_v2(cgroup: str, directory: str, mount_base: str) -> CgroupMemory | None:
    current = _read_int(directory, "memory.current")
    if current is None:
        return None  # the root cgroup: no memory.current, not "in a memory cgroup"
    limits = []
    walk = os.path.normpath(directory)
    while True:
        value = _read_int(walk, "memory.max")
        if value is not None:
            limits.append(value)
        if walk == mount_base or len(walk) <= len(mount_base):
            break
        walk = os.path.dirname(walk)
    stat = _read_stat(directory)
    return CgroupMemory(
        version=2,
        cgroup=cgroup,
        directory=directory,
        current=current,
        peak=_read_int(directory, "memory.peak"),
        limit=min(limits) if limits else None,
        anon=stat.get("anon"),
        file=stat.get("file"),
        kernel=stat.get("kernel"),
        slab=stat.get("slab"),
        shmem=stat.get("shmem"),
        stat=MappingProxyType(stat),
    )


def _read_v1(cgroup: str, directory: str) -> CgroupMemory | None:
    current = _read_int(directory, "memory.usage_in_bytes")
    if current is None:
        return None
    stat = _read_stat(directory)
    limits = [
        v
        for v in (
            _read_int(directory, "memory.limit_in_bytes"),
            stat.get("hierarchical_memory_limit"),
        )
        if v is not None and v < _V1_UNLIMITED
    ]
    return CgroupMemory(
        version=1,
        cgroup=cgroup,
        directory=directory,
        current=current,
        peak=_read_int(directory, "memory.max_usage_in_bytes"),
        limit=min(limits) if limits else None,
        anon=stat.get("total_rss", stat.get("rss")),
        file=stat.get("total_cache", stat.get("cache")),
        kernel=_read_int(directory, "memory.kmem.usage_in_bytes"),
        slab=stat.get("total_slab", stat.get("slab")),
        shmem=stat.get("total_shmem", stat.get("shmem")),
        stat=MappingProxyType(stat),
    )
