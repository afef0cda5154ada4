"""The command line's argparse parser, built for one sub-command or for all of them.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import importlib

from forkmem._version import __version__

TYPE_CHECKING = False  # importing typing would cost every command's start-up a few ms
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["COMMANDS", "UsageError", "build_parser", "command_of"]

# One module per sub-command, in the order `forkmem --help` lists them.
COMMANDS = (
    "forkmem.cli._demo",
    "forkmem.cli._memory",
    "forkmem.cli._watch",
    "forkmem.cli._export",
    "forkmem.cli._bytecode",
    "forkmem.cli._doctor",
)


class UsageError(Exception):
    """A command line argparse rejected; carries the parser whose usage applies."""

    def __init__(self, message: str, parser: argparse.ArgumentParser) -> None:
        super().__init__(message)
        self.parser = parser


class _Parser(argparse.ArgumentParser):
    # argparse prints and exits on a bad command line; raising instead lets main() report it
    # in the one error format (sub-parsers are built with this class too).
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Return the argument parser (used by ``forkmem.cli.main`` and by the tests).

    With ``command`` (a sub-command's name), only that sub-command's module is imported and
    registered: ``forkmem bytecode`` starts without loading what ``forkmem demo`` needs.
    """
    parser = _Parser(
        prog="forkmem",
        description="Keep forked workers' memory shared, and measure it.",
    )
    parser.add_argument("--version", action="version", version=f"forkmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        if command is None or name.rpartition("._")[2] == command:
            importlib.import_module(name).register(sub)
    for parser_ in set(sub.choices.values()):
        # Every command takes --json, if only for its errors (see forkmem.cli.main).
        if "--json" not in parser_._option_string_actions:
            parser_.add_argument(
                "--json", action="store_true", help="report errors as one JSON object on stdout"
            )
    return parser


def command_of(argv: list[str]) -> str | None:
    """The sub-command named on the command line, if it is one (else every one is loaded)."""
    for word in argv:
        if not word.startswith("-"):
            return word if any(n.rpartition("._")[2] == word for n in COMMANDS) else None
        if word == "--":
            return None
    return None
