"""``forkmem memory``: a smem-like table of RSS/PSS/USS for a process or tree, or its cgroup."""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from forkmem._units import format_bytes
from forkmem.errors import AccessDenied, NoSuchProcess

if TYPE_CHECKING:
    import argparse

_FULL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("RSS", "rss"),
    ("PSS", "pss"),
    ("USS", "uss"),
    ("PRIV DIRTY", "private_dirty"),
    ("SWAP", "swap"),
)
_FAST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("RSS", "rss"),
    ("ANON", "rss_anon"),
    ("FILE", "rss_file"),
    ("SHMEM", "rss_shmem"),
    ("SWAP", "swap"),
    ("PEAK", "peak_rss"),
)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "memory",
        aliases=["mem"],
        help="RSS, PSS, USS and copy-on-write figures of a process, its tree or its cgroup",
        description=(
            "Show a process's memory as the kernel accounts it (from /proc/PID/smaps_rollup): "
            "RSS, PSS (shared pages divided among the processes mapping them), USS and "
            "private dirty pages. With --tree, add every descendant and the totals."
        ),
    )
    parser.add_argument("pid", nargs="?", type=int, help="process id (default: this process)")
    parser.add_argument("--tree", action="store_true", help="include all descendants and totals")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="cheap tier from /proc/PID/status: RSS split, no PSS/USS",
    )
    parser.add_argument(
        "--cgroup", action="store_true", help="show this process's memory cgroup instead"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        if args.cgroup:
            return _run_cgroup(args)
        return _run_processes(args)
    except NoSuchProcess as exc:
        # A pid that is not (or no longer) a live process is bad input: exit 2, as for pid 0.
        print(f"forkmem memory: {exc}", file=sys.stderr)
        return 2
    except AccessDenied as exc:
        print(f"forkmem memory: {exc}", file=sys.stderr)
        return 1


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().decode("utf-8", "replace").strip()
    except OSError:
        pass
    try:
        import psutil

        return str(psutil.Process(pid).name())
    except Exception:  # the name is decoration: never fail the table over it
        return "?"


def _run_processes(args: argparse.Namespace) -> int:
    from forkmem.memory import _check_pid, memory, rss_breakdown
    from forkmem.tree import _descendant_pids, memory_tree

    pid = _check_pid(args.pid)
    skipped = denied = 0
    rows: list[Any]
    if args.fast:
        rows = [rss_breakdown(pid)]
        columns = _FAST_COLUMNS
        if args.tree:
            for child in _descendant_pids(pid):
                try:
                    rows.append(rss_breakdown(child))
                except NoSuchProcess:
                    skipped += 1
                except AccessDenied:  # counted like --tree without --fast, not fatal
                    denied += 1
        totals: dict[str, int | None] = {"rss": sum(r.rss for r in rows)}
    else:
        columns = _FULL_COLUMNS
        if args.tree:
            tree = memory_tree(pid)
            rows = list(tree.processes)
            skipped, denied = tree.skipped, tree.denied
            totals = {
                "rss": tree.total_rss,
                "pss": tree.total_pss,
                "uss": tree.total_uss,
                "shared_savings": tree.shared_savings,
            }
        else:
            rows = [memory(pid)]
            totals = {"rss": rows[0].rss, "pss": rows[0].pss, "uss": rows[0].uss}
    commands = {r.pid: _command(r.pid) for r in rows}
    if args.json:
        import json

        out = {
            "root": pid,
            "tree": bool(args.tree),
            "fast": bool(args.fast),
            "processes": [dict(_as_dict(r), command=commands[r.pid]) for r in rows],
            "totals": totals,
            "skipped": skipped,
            "denied": denied,
        }
        print(json.dumps(out, indent=2))
        return 0
    _print_table(rows, columns, commands, totals if len(rows) > 1 else None)
    if args.tree and "shared_savings" in totals:
        print(
            f"shared savings (sum RSS - sum PSS): {format_bytes(totals['shared_savings'])}"
            f"   tree footprint (sum PSS): {format_bytes(totals['pss'])}"
        )
    if skipped or denied:
        print(f"skipped: {skipped} exited during the walk, {denied} not readable (permission)")
    return 0


def _print_table(
    rows: list[Any],
    columns: tuple[tuple[str, str], ...],
    commands: dict[int, str],
    totals: dict[str, int | None] | None,
) -> None:
    width = max([16, *(len(c) for c in commands.values())])
    width = min(width, 32)
    header = f"{'PID':>8}  {'COMMAND':<{width}}" + "".join(f"{t:>12}" for t, _ in columns)
    print(header)
    for row in rows:
        cells = "".join(f"{format_bytes(getattr(row, name)):>12}" for _, name in columns)
        print(f"{row.pid:>8}  {commands[row.pid][:width]:<{width}}{cells}")
    if totals is not None:
        label = f"TOTAL ({len(rows)})"
        cells = "".join(
            f"{format_bytes(totals[name]) if name in totals else '':>12}" for _, name in columns
        )
        print(f"{'':>8}  {label:<{width}}{cells}")


def _run_cgroup(args: argparse.Namespace) -> int:
    from forkmem.cgroup import cgroup_memory

    cg = cgroup_memory()
    if args.json:
        import json

        data = None if cg is None else dict(_as_dict(cg), stat=dict(cg.stat))
        print(json.dumps(data, indent=2))
        return 0
    if cg is None:
        print("not in a memory cgroup (or the cgroup filesystem is not visible)")
        return 0
    limit = "unlimited" if cg.limit is None else format_bytes(cg.limit)
    print(f"cgroup v{cg.version} {cg.cgroup}  ({cg.directory})")
    print(f"  current   {format_bytes(cg.current):>12}")
    print(f"  peak      {format_bytes(cg.peak):>12}")
    print(f"  limit     {limit:>12}")
    if cg.headroom is not None:
        print(f"  headroom  {format_bytes(cg.headroom):>12}")
    for name in ("anon", "file", "kernel", "slab", "shmem"):
        print(f"  {name:<9} {format_bytes(getattr(cg, name)):>12}")
    return 0
