"""``forkmem memory``: a smem-like table of RSS/PSS/USS for a process or tree, or its cgroup.

Every sample becomes one JSON-ready dict first (``_collect``); the table, the JSON lines and
the watch loop all render that dict, so sorting and grouping work the same in every mode.
"""

from __future__ import annotations

import os
import stat
import sys
import time

from forkmem._units import format_bytes
from forkmem._validate import check_seconds
from forkmem.errors import AccessDenied, InvalidArgument, NoSuchProcess

TYPE_CHECKING = False  # typing costs start-up time; mypy reads the block below all the same
if TYPE_CHECKING:
    import argparse
    import re
    from typing import Any

# (header, key) per table column; the keys are also the JSON keys and the --sort names.
_FULL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("RSS", "rss"),
    ("PSS", "pss"),
    ("USS", "uss"),
    ("PRIV DIRTY", "private_dirty"),
    ("SWAP", "swap"),
    ("SHARED", "shared_with_parent"),
    ("PEAK", "peak_rss"),
)
_FAST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("RSS", "rss"),
    ("ANON", "rss_anon"),
    ("FILE", "rss_file"),
    ("SHMEM", "rss_shmem"),
    ("SWAP", "swap"),
    ("PEAK", "peak_rss"),
)
_GROUP_SUMS = ("rss", "pss", "uss", "private_dirty", "swap", "rss_anon", "rss_file", "rss_shmem")
_SORT_ALIASES = {"dirty": "private_dirty", "shared": "shared_with_parent", "peak": "peak_rss"}
_SORT_KEYS = sorted(
    {"pid", "ppid", "command", "count"}
    | {k for _, k in _FULL_COLUMNS + _FAST_COLUMNS}
    | set(_SORT_ALIASES)
)
_CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: redraw the table in place


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "memory",
        aliases=["mem"],
        help="RSS, PSS, USS and copy-on-write figures of a process, its tree or its cgroup",
        description=(
            "Show a process's memory as the kernel accounts it (from /proc/PID/smaps_rollup): "
            "RSS, PSS (shared pages divided among the processes mapping them), USS, private "
            "dirty pages, what each child still shares with its parent and the peak RSS. "
            "With --tree, add every descendant and the totals."
        ),
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument("pid", nargs="?", type=int, help="process id (default: this process)")
    target.add_argument(
        "--pid-file", metavar="FILE", help="read the process id from FILE (gunicorn --pid)"
    )
    parser.add_argument("--tree", action="store_true", help="include all descendants and totals")
    parser.add_argument(
        "--match",
        metavar="REGEX",
        help="only processes whose command line matches REGEX; without a pid, search every "
        "process on the system (like smem -P)",
    )
    parser.add_argument(
        "--group", action="store_true", help="one row per program, summed (like ps_mem)"
    )
    parser.add_argument(
        "--sort",
        metavar="COLUMN",
        type=str.lower,
        choices=_SORT_KEYS,
        help=f"order rows by COLUMN, largest first ({', '.join(_SORT_KEYS)})",
    )
    parser.add_argument(
        "--watch",
        metavar="SECONDS",
        type=float,
        help="sample every SECONDS: the table is redrawn in place on a terminal, one JSON "
        "object per line when piped or with --json",
    )
    parser.add_argument("--count", metavar="N", type=int, help="with --watch: stop after N samples")
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
    if args.watch is not None:
        check_seconds("--watch", args.watch)
    if args.count is not None and args.count <= 0:
        raise InvalidArgument(f"--count needs a positive number, not {args.count}")
    # NoSuchProcess (exit 2) and AccessDenied (exit 1) are reported by the dispatcher.
    if args.cgroup:
        return _run_cgroup(args)
    return _run_processes(args)


def read_pid_file(path: str) -> int:
    """The pid written in ``path`` (a server's pid file), as a typed error when unusable."""
    try:
        # Non-blocking, and only a regular file: the service user may have put a FIFO there,
        # and opening one waits for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise InvalidArgument(f"cannot read pid file {path}: not a regular file")
            text = os.read(fd, 64).strip()
        finally:
            os.close(fd)
    except OSError as exc:
        raise InvalidArgument(f"cannot read pid file {path}: {exc.strerror}") from None
    if not text.isdigit() or int(text) <= 0:
        raise InvalidArgument(f"pid file {path} does not hold a process id: {text[:20]!r}")
    return int(text)


def _pattern(regex: str | None) -> re.Pattern[str] | None:
    if regex is None:
        return None
    import re

    try:
        return re.compile(regex)
    except re.error as exc:
        raise InvalidArgument(f"--match: bad regular expression {regex!r}: {exc}") from None


def _collect(args: argparse.Namespace, pid: int | None, match: re.Pattern[str] | None) -> Any:
    """One sample as the JSON object ``--json`` prints."""
    from forkmem import _snapshot

    tree = bool(args.tree or (match is not None and pid is not None))
    if args.fast:
        sample = _fast_sample(pid, tree=tree, match=match)
    elif pid is None:  # --match without a pid: every process on the system
        from forkmem import _ptable

        parents = _ptable.parent_map()
        others = sorted(set(parents) - {os.getpid()})  # our own command line holds the regex
        found = _snapshot.sample_processes(others, parents=parents, match=match)
        sample = _sample_dict(found, tree=True)
    else:
        sample = _sample_dict(_snapshot.sample_tree(pid, tree=tree, match=match), tree=tree)
    sample["fast"] = bool(args.fast)
    if args.group:
        sample["groups"] = _groups(sample["processes"])
    key = _SORT_ALIASES.get(args.sort, args.sort)
    if key is not None:
        for rows in (sample["processes"], sample.get("groups", [])):
            rows.sort(key=lambda row: _sort_key(row.get(key)))
    return sample


def _sample_dict(sample: Any, *, tree: bool) -> dict[str, Any]:
    processes = [p.as_dict() for p in sample.processes]
    totals = sample.totals()
    if not tree:
        totals = {k: totals[k] for k in ("rss", "pss", "uss")}
    return {
        "time": round(sample.time, 3),
        "root": sample.root,
        "tree": tree,
        "processes": processes,
        "totals": totals,
        "skipped": sample.skipped,
        "denied": sample.denied,
    }


def _fast_sample(pid: int | None, *, tree: bool, match: re.Pattern[str] | None) -> dict[str, Any]:
    from forkmem import _ptable
    from forkmem._pid import check_pid
    from forkmem._snapshot import status_of

    root = None if pid is None else check_pid(pid)
    parents = _ptable.parent_map()
    if root is None:
        pids = sorted(set(parents) - {os.getpid()})  # our own command line holds the regex
    else:
        status_of(root)  # a missing root is the caller's error
        pids = [root, *(_ptable.descendants(root, parents) if tree else ())]
    rows: list[dict[str, Any]] = []
    skipped = denied = 0
    for p in pids:
        line = _ptable.cmdline(p)
        if match is not None and (line is None or not match.search(line)):
            continue
        try:
            row = status_of(p)
        except NoSuchProcess:
            skipped += 1
            continue
        except AccessDenied:  # counted like the full tier, not fatal
            denied += 1
            continue
        row.update(command=_command(p), ppid=parents.get(p), cmdline=line)
        rows.append(row)
    return {
        "time": round(time.time(), 3),
        "root": root,
        "tree": tree,
        "processes": rows,
        "totals": {"rss": sum(r["rss"] for r in rows)},
        "skipped": skipped,
        "denied": denied,
    }


def _command(pid: int) -> str:
    from forkmem._snapshot import process_name

    return process_name(pid)


def _groups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per program name, its members' figures summed, largest PSS (or RSS) first."""
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        group = groups.setdefault(row["command"], {"command": row["command"], "count": 0})
        group["count"] += 1
        for key in _GROUP_SUMS:
            if key in row:
                value = row[key]
                total = group.get(key, 0)
                group[key] = None if value is None or total is None else total + value
    key = "pss" if any("pss" in g for g in groups.values()) else "rss"
    return sorted(groups.values(), key=lambda g: _sort_key(g.get(key)))


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers largest first, text alphabetically, unknown values last."""
    if value is None:
        return (2, 0)
    if isinstance(value, str):
        return (1, value)
    return (0, -value)


def _run_processes(args: argparse.Namespace) -> int:
    match = _pattern(args.match)
    pid: int | None = read_pid_file(args.pid_file) if args.pid_file else args.pid
    if pid is None and match is None:
        pid = os.getpid()
    as_json = args.json or (args.watch is not None and not sys.stdout.isatty())
    taken = 0
    while True:
        sample = _collect(args, pid, match)
        taken += 1
        if as_json:
            import json

            sys.stdout.write(json.dumps(sample, separators=(",", ":")) + "\n")
        else:
            text = _render(sample)
            sys.stdout.write(_CLEAR + _watch_title(args) + text if args.watch else text)
        sys.stdout.flush()
        if args.watch is None or (args.count is not None and taken >= args.count):
            return 0
        time.sleep(args.watch)


def _watch_title(args: argparse.Namespace) -> str:
    return f"forkmem memory, every {args.watch:g} s  {time.strftime('%H:%M:%S')}\n\n"


def _render(sample: dict[str, Any]) -> str:
    columns = _FAST_COLUMNS if sample["fast"] else _FULL_COLUMNS
    lines: list[str] = []
    if "groups" in sample:
        labels = [f"{g['command']} ({g['count']})" for g in sample["groups"]]
        _table(lines, "PROGRAM", labels, sample["groups"], columns, None, pid_title="")
        return "\n".join(lines) + "\n"
    rows = sample["processes"]
    labels = [str(r["command"]) for r in rows]
    _table(lines, "COMMAND", labels, rows, columns, sample["totals"] if len(rows) > 1 else None)
    totals = sample["totals"]
    if sample["tree"] and totals.get("shared_savings") is not None:
        lines.append(
            f"shared savings (sum RSS - sum PSS): {format_bytes(totals['shared_savings'])}"
            f"   tree footprint (sum PSS): {format_bytes(totals['pss'])}"
        )
    if sample["skipped"] or sample["denied"]:
        lines.append(
            f"skipped: {sample['skipped']} exited during the walk, "
            f"{sample['denied']} not readable (permission)"
        )
    return "\n".join(lines) + "\n"


def _table(
    lines: list[str],
    title: str,
    labels: list[str],
    rows: list[dict[str, Any]],
    columns: tuple[tuple[str, str], ...],
    totals: dict[str, int | None] | None,
    pid_title: str = "PID",
) -> None:
    width = min(max([16, *(len(label) for label in labels)]), 32)
    lines.append(f"{pid_title:>8}  {title:<{width}}" + "".join(f"{t:>12}" for t, _ in columns))
    for row, label in zip(rows, labels, strict=True):
        cells = "".join(f"{_cell(row, name):>12}" for _, name in columns)
        lines.append(f"{row.get('pid', ''):>8}  {label[:width]:<{width}}{cells}")
    if totals is not None:
        label = f"TOTAL ({len(rows)})"
        cells = "".join(
            f"{format_bytes(totals[name]) if name in totals else '':>12}" for _, name in columns
        )
        lines.append(f"{'':>8}  {label:<{width}}{cells}")


def _cell(row: dict[str, Any], name: str) -> str:
    if name not in row:
        return ""
    if row[name] is None and name == "shared_with_parent":
        return "-"  # the root, or a process whose parent is outside the sample
    return format_bytes(row[name])


def _run_cgroup(args: argparse.Namespace) -> int:
    from forkmem.cgroup import cgroup_memory

    cg = cgroup_memory()
    if args.json:
        import dataclasses
        import json

        fields = {} if cg is None else {f.name: getattr(cg, f.name) for f in dataclasses.fields(cg)}
        data = None if cg is None else dict(fields, stat=dict(cg.stat))
        print(json.dumps(data))
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
