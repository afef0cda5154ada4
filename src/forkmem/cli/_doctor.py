"""``forkmem doctor``: the settings that decide fork memory, each with what to do about it.

Exit status: 0 nothing to warn about, 1 at least one warning, 2 usage error.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "doctor",
        help="one screen on the settings that decide how much forked workers share",
        description=(
            "Check the bytecode cache of site-packages, sys.dont_write_bytecode, transparent "
            "huge pages, the garbage collector, the multiprocessing start method and the "
            "cgroup memory limit, and say what to do about each. Exit status: 0 no warning, "
            "1 at least one warning, 2 usage error."
        ),
    )
    parser.add_argument(
        "pid",
        nargs="?",
        type=int,
        help="check this process from the outside (read from /proc, nothing of it imported)",
    )
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.add_argument(
        "--path",
        action="append",
        metavar="PATH",
        help="check the bytecode cache of PATH instead of site-packages (repeatable)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from forkmem.bytecode import normalize_paths
    from forkmem.doctor import diagnose

    paths = normalize_paths(args.path) if args.path else None
    result = diagnose(paths=paths, pid=args.pid)
    if args.json:
        sys.stdout.write(result.to_json(indent=None) + "\n")
    else:
        sys.stdout.write(result.summary() + "\n")
    return 0 if result.ok else 1
