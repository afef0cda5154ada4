"""The ``forkmem`` command line.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` (``args -> exit code``). Exit codes: 0 fine, 1 a check found a
problem, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import TYPE_CHECKING

from forkmem._version import __version__
from forkmem.errors import ForkmemError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["main"]

# One module per sub-command, in the order `forkmem --help` lists them.
_COMMANDS = (
    "forkmem.cli._demo",
    "forkmem.cli._memory",
    "forkmem.cli._watch",
    "forkmem.cli._export",
    "forkmem.cli._bytecode",
    "forkmem.cli._doctor",
)


def build_parser() -> argparse.ArgumentParser:
    """Return the full argument parser (used by ``main`` and by the docs)."""
    parser = argparse.ArgumentParser(
        prog="forkmem",
        description="Keep forked workers' memory shared, and measure it.",
    )
    parser.add_argument("--version", action="version", version=f"forkmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ForkmemError as exc:
        print(f"forkmem: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader left (`| head`): point stdout at /dev/null so the interpreter's final
        # flush does not fail a second time and turn a clean exit into an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code
