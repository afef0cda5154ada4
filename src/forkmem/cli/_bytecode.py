"""``forkmem bytecode``: which files does every new process compile from source?

Exit status: 0 every source has a valid pyc, 1 something is missing, stale or unwritable
(after ``--fix``: something could not be fixed), 2 usage error. Usable as a Dockerfile ``RUN``
check or a CI step.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

from forkmem._bytecode_scan import scan, site_dirs
from forkmem._units import format_bytes
from forkmem.errors import InvalidArgument

TYPE_CHECKING = False  # typing stays off the check's path (a fresh process's start-up)
if TYPE_CHECKING:
    import argparse
    from typing import Any

    from forkmem._bytecode_scan import Scan

_LIST_LIMIT = 20
# Every option's value when it is not given: register() hands them to argparse, plain_args()
# to a command line that names only paths.
_DEFAULTS = {
    "json": False,
    "fix": False,
    "cost": False,
    "workers": 0,
    "optimize": None,
    "all": False,
}


def plain_args(paths: list[str]) -> SimpleNamespace:
    """What the parser makes of ``forkmem bytecode [PATH ...]`` (no option), without argparse."""
    return SimpleNamespace(command="bytecode", paths=list(paths), **_DEFAULTS, func=run)


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "bytecode",
        help="check the bytecode cache (.pyc) of a tree or of site-packages; --fix compiles",
        description=(
            "Report the .py files that have no usable bytecode cache (missing, stale, or in a "
            "cache directory this user cannot write), so every new process compiles them. "
            "Nothing is imported or executed, and nothing is written unless --fix is given. "
            "Exit status: 0 all cached, 1 something missing/stale/unwritable, 2 usage error."
        ),
    )
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="files or directories to check (default: this interpreter's site-packages)",
    )
    parser.add_argument("--json", action="store_true", help="print the full report as JSON")
    parser.add_argument(
        "--fix", action="store_true", help="compile the missing/stale files, then check again"
    )
    parser.add_argument(
        "--cost",
        action="store_true",
        help="measure the CPU time and private memory a new process spends compiling them",
    )
    parser.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="with --fix: compile in N subprocesses (default 0: in this process)",
    )
    parser.add_argument(
        "--optimize",
        type=int,
        choices=(0, 1, 2),
        metavar="LEVEL",
        help="check the pycs of this optimization level: 0, 1 (opt-1), 2 (opt-2); "
        "default: this interpreter's (-O)",
    )
    parser.add_argument(
        "--all", action="store_true", help=f"list every uncached file, not just {_LIST_LIMIT}"
    )
    parser.set_defaults(**_DEFAULTS, func=run)


def run(args: argparse.Namespace | SimpleNamespace) -> int:
    # The plain check prints from the scan's rows: the report types (dataclasses) and the
    # compiler load only for --json, --fix and --cost.
    if args.workers < 0:
        raise InvalidArgument("--workers must be >= 0")
    paths = args.paths or site_dirs()
    if not paths:
        raise InvalidArgument("no PATH given and this interpreter has no site-packages directory")
    found = before = scan(paths=paths, optimization=args.optimize)
    fix = cost = None
    if args.fix or args.cost or args.json:
        from forkmem.bytecode import as_report, compile_bytecode

        if args.fix and not found.ok:
            fix = compile_bytecode(as_report(found), workers=args.workers)
            found = scan(paths=paths, optimization=args.optimize)
        if args.cost:
            from forkmem._bytecode_cost import measure_compile_cost

            sources = [r[0] for r in before.uncached() if r[0]]
            if sources:
                cost = measure_compile_cost(sources, optimization=before.optimization)
        if args.json:
            import json

            out = as_report(found).as_dict()
            out["fix"] = None if fix is None else {**fix.as_dict(), "before": dict(before.counts)}
            out["cost"] = None if cost is None else cost.as_dict()
            json.dump(out, sys.stdout, indent=2)
            sys.stdout.write("\n")
            return 0 if found.ok else 1
    _print_human(found, fix, cost, args)
    return 0 if found.ok else 1


def _print_human(
    found: Scan, fix: Any, cost: Any, args: argparse.Namespace | SimpleNamespace
) -> None:
    w = sys.stdout.write
    if fix is not None:
        w(f"--fix: {fix.summary()}\n")
        for f in fix.failed[: None if args.all else _LIST_LIMIT]:
            kind = "syntax error" if f.syntax_error else "error"
            w(f"  {kind}: {f.source}: {f.error}\n")
    w(found.summary() + "\n")
    bad = found.uncached()
    if bad:
        shown = bad if args.all else bad[:_LIST_LIMIT]
        for source, _cache, status, reason, size, _module, _mode in shown:
            w(f"  {status:<10} {format_bytes(size):>10}  {source}  ({reason})\n")
        if len(shown) < len(bad):
            w(f"  ... and {len(bad) - len(shown)} more (--all or --json lists them)\n")
    for path, reason in found.problems[: None if args.all else _LIST_LIMIT]:
        w(f"  cannot check {path}: {reason}\n")
    if cost is not None:
        w(cost.summary() + "\n")
    elif args.cost:
        w("--cost: nothing to measure, every source has a valid pyc\n")
    if not found.ok and fix is None:
        import shlex

        targets = " ".join(shlex.quote(p) for p in found.paths)
        # Not compileall: it writes through a symlinked __pycache__ out of the tree.
        w(f"fix: forkmem bytecode --fix {targets}\n")
