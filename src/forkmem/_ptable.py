"""The process table: who is whose parent, and what each process runs.

On Linux this reads ``/proc/*/stat`` directly: psutil finds children the same way but costs an
import the command line's start-up cannot afford. Elsewhere psutil answers.
"""

from __future__ import annotations

import os
import sys

__all__ = ["LINUX", "cmdline", "descendants", "parent_map"]

LINUX = sys.platform.startswith("linux") and os.path.isdir("/proc/self")


def parent_map() -> dict[int, int]:
    """Map every visible process id to its parent's id."""
    if not LINUX:
        import psutil

        return {p.pid: p.info["ppid"] or 0 for p in psutil.process_iter(["ppid"])}
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                data = f.read()
        except OSError:  # exited since listdir
            continue
        # The command name may hold spaces and ')': the fields start after the last ')'.
        fields = data[data.rfind(b")") + 2 :].split(b" ", 2)
        if len(fields) >= 2 and fields[1].isdigit():
            out[int(name)] = int(fields[1])
    return out


def descendants(pid: int, parents: dict[int, int] | None = None) -> list[int]:
    """Every descendant of ``pid``, parents before their children, each level by pid."""
    table = parent_map() if parents is None else parents
    children: dict[int, list[int]] = {}
    for child, parent in table.items():
        if child != parent:
            children.setdefault(parent, []).append(child)
    out: list[int] = []
    level = [pid]
    seen = {pid}
    while level:
        below = sorted(c for p in level for c in children.get(p, ()) if c not in seen)
        seen.update(below)
        out.extend(below)
        level = below
    return out


def cmdline(pid: int) -> str | None:
    """The command line of ``pid``, arguments joined by spaces; ``None`` if unreadable.

    Kernel threads and zombies have an empty command line: their ``comm`` name in brackets,
    as ps shows it.
    """
    if not LINUX:
        import psutil

        try:
            return " ".join(psutil.Process(pid).cmdline())
        except psutil.Error:
            return None
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
        if not raw:
            with open(f"/proc/{pid}/comm", "rb") as f:
                return "[" + f.read().decode("utf-8", "replace").strip() + "]"
    except OSError:
        return None
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")
