"""``forkmem export``: serve Prometheus metrics for a process tree until it exits."""

from __future__ import annotations

import os
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Mapping


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "export",
        help="serve Prometheus /metrics for a process tree (needs the 'metrics' extra)",
        description=(
            "Serve /metrics for PID and its descendants: per process uss, pss, rss, "
            "private_dirty, shared_with_parent and peak_rss (labels pid, role, command), per "
            "tree the totals and shared savings, all read from /proc at scrape time. Exits "
            "when the root process does."
        ),
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("pid", nargs="?", type=int, help="root of the process tree")
    target.add_argument("--pid-file", metavar="FILE", help="read the root's pid from FILE")
    parser.add_argument(
        "--listen",
        default="127.0.0.1:9464",
        metavar="HOST:PORT",
        help="address to serve on (default 127.0.0.1:9464; port 0 picks a free one)",
    )
    parser.add_argument(
        "--stats-stdin",
        action="store_true",
        help="read the master's recycle counts as JSON lines on stdin (the integrations' "
        "metrics= option sends them)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='announce the endpoint as one JSON line ({"serving": URL, "root": PID})',
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from forkmem import metrics
    from forkmem._common import check_pid
    from forkmem.cli._memory import read_pid_file
    from forkmem.errors import NoSuchProcess
    from forkmem.usage import rss_breakdown

    pid = check_pid(read_pid_file(args.pid_file) if args.pid_file else args.pid)
    rss_breakdown(pid)  # a missing root is a usage error before a port is opened
    recycles = _stdin_counts() if args.stats_stdin else None
    server = metrics.serve_metrics(pid, listen=args.listen, skip=(os.getpid(),), recycles=recycles)
    if args.json:
        import json

        sys.stdout.write(json.dumps({"serving": server.url, "root": pid}) + "\n")
    else:
        sys.stdout.write(f"forkmem export: serving {server.url} for the tree of {pid}\n")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(1.0)
            try:
                rss_breakdown(pid)
            except NoSuchProcess:  # the tree is gone (exited or a zombie): so is its exporter
                break
    finally:
        server.close()
    return 0


def _stdin_counts() -> Callable[[], Mapping[str, Any]]:
    """Follow JSON lines on stdin from a reader thread; return the latest one's getter.

    The exporter never forks, so a thread here is safe (unlike in the master that sends them).
    """
    import json
    import threading

    latest: dict[str, Any] = {"soft": 0, "hard": 0}

    def follow() -> None:
        for line in sys.stdin:
            try:
                data = json.loads(line)
            except ValueError:
                continue
            if isinstance(data, dict):
                latest.clear()
                latest.update(data)

    threading.Thread(target=follow, name="forkmem-stats", daemon=True).start()
    return lambda: dict(latest)
