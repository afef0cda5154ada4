"""``forkmem watch``: sample a tree and its cgroup for a while, then say where growth comes from."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

from forkmem._validate import check_seconds

if TYPE_CHECKING:
    import argparse


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "watch",
        help="sample a process tree and its cgroup, then name where memory growth comes from",
        description=(
            "Sample PID, its descendants and its memory cgroup every --interval seconds for "
            "--duration seconds (Ctrl-C stops early), then report growth rates in MiB/h and "
            "their cause: a leak in one process, copy-on-write in the children, more "
            "processes, kernel memory or page cache, with the fix that applies."
        ),
    )
    parser.add_argument("pid", type=int, help="root of the process tree to watch")
    parser.add_argument(
        "--duration", type=float, default=60.0, metavar="S", help="seconds to watch (60)"
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between samples (default: duration / 60, at least 0.2)",
    )
    parser.add_argument(
        "--plot",
        metavar="FILE",
        help="write the series as a chart (.png or .svg; needs the 'plot' extra)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as one JSON line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from forkmem import _growth, _snapshot
    from forkmem.cgroup import cgroup_memory

    check_seconds("--duration", args.duration)
    interval = args.interval if args.interval is not None else max(0.2, args.duration / 60)
    check_seconds("--interval", interval)
    if args.plot:
        from forkmem import _plot

        # A bad path or a missing extra fails now, not after the whole watch.
        _plot.check_path(args.plot)
        _plot.pyplot()
    me = os.getpid()
    samples = []
    cgroups = []
    start = time.monotonic()
    try:
        while True:
            samples.append(_snapshot.sample_tree(args.pid, skip=(me,)))
            cgroups.append(cgroup_memory(args.pid))
            left = args.duration - (time.monotonic() - start)
            if left <= 0:
                break
            time.sleep(min(interval, left))
    except KeyboardInterrupt:
        if len(samples) < 2:
            return 130
    report = _growth.analyze(samples, cgroups)
    if args.plot:
        _plot.plot_growth(report, args.plot)
    if args.json:
        import json

        sys.stdout.write(json.dumps(report.as_dict(), separators=(",", ":")) + "\n")
    else:
        sys.stdout.write(f"forkmem watch {args.pid}: " + report.summary() + "\n")
    return 0
