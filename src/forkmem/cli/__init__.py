"""The ``forkmem`` command line.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` (``args -> exit code``). Exit codes: 0 fine, 1 a check found a
problem, 2 usage or input error, 3 an internal error (a bug in forkmem), 130 interrupted.

Errors are reported here, once for every command: a line on stderr, or with ``--json`` one
JSON object on stdout, ``{"error": {"type": ..., "message": ..., "exit_code": ...}}``.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import importlib
import os
import sys

from forkmem._version import __version__
from forkmem.errors import AccessDenied, ForkmemError

TYPE_CHECKING = False  # importing typing would cost every command's start-up a few ms
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, NoReturn

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

EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


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
    """Return the argument parser (used by ``main`` and by the docs).

    With ``command`` (a sub-command's name), only that sub-command's module is imported and
    registered: ``forkmem bytecode`` starts without loading what ``forkmem demo`` needs.
    """
    parser = _Parser(
        prog="forkmem",
        description="Keep forked workers' memory shared, and measure it.",
    )
    parser.add_argument("--version", action="version", version=f"forkmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _COMMANDS:
        if command is None or name.rpartition("._")[2] == command:
            importlib.import_module(name).register(sub)
    for parser_ in set(sub.choices.values()):
        # Every command takes --json, if only for its errors (see main).
        if "--json" not in parser_._option_string_actions:
            parser_.add_argument(
                "--json", action="store_true", help="report errors as one JSON object on stdout"
            )
    return parser


def _command_of(argv: list[str]) -> str | None:
    """The sub-command named on the command line, if it is one (else every one is loaded)."""
    for word in argv:
        if not word.startswith("-"):
            return word if any(n.rpartition("._")[2] == word for n in _COMMANDS) else None
        if word == "--":
            return None
    return None


def _path_safe(exc: UnicodeError) -> tuple[str | bytes, int]:
    # A file name that is not valid in the file system encoding arrives as lone surrogates
    # (os.fsdecode): write back its original bytes, so the name printed is the name on disk;
    # any other character the stream cannot encode becomes a backslash escape.
    try:
        return codecs.lookup_error("surrogateescape")(exc)
    except UnicodeError:
        return codecs.lookup_error("backslashreplace")(exc)


_ERRORS = "forkmem.path-safe"
codecs.register_error(_ERRORS, _path_safe)


def _tolerant_stdout() -> None:
    """Make stdout print every file name instead of raising UnicodeEncodeError (exit 1)."""
    reconfigure = getattr(sys.stdout, "reconfigure", None)
    if reconfigure is not None:
        # A closed or detached stream has nothing to protect.
        with contextlib.suppress(ValueError, OSError):
            reconfigure(errors=_ERRORS)


def _wants_json(argv: Sequence[str]) -> bool:
    # Decided from the raw words, so a command line argparse rejects is reported as JSON too.
    for word in argv:
        if word == "--":
            return False
        if word == "--json":
            return True
    return False


def error_object(kind: str, message: str, exit_code: int) -> dict[str, Any]:
    """The ``--json`` error shape, shared by every command."""
    return {"error": {"type": kind, "message": message, "exit_code": exit_code}}


def _report(kind: str, message: str, code: int, *, as_json: bool) -> int:
    if as_json:
        import json  # only on the error path: it costs a new process more than the dispatch

        json.dump(error_object(kind, message, code), sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
    elif message:
        print(f"forkmem: error: {message}", file=sys.stderr)
    return code


def _dispatch(argv: list[str], as_json: bool) -> int:
    try:
        args = build_parser(_command_of(argv)).parse_args(argv)
    except UsageError as exc:
        if not as_json:
            exc.parser.print_usage(sys.stderr)
        return _report("UsageError", str(exc), EXIT_USAGE, as_json=as_json)
    as_json = bool(getattr(args, "json", as_json))
    try:
        code: int = args.func(args)
    except ForkmemError as exc:
        # Bad input (a missing pid, a path that does not exist) is a usage error; another
        # user's process is a finding about the system, like a check that failed.
        code = EXIT_PROBLEM if isinstance(exc, AccessDenied) else EXIT_USAGE
        return _report(type(exc).__name__, str(exc), code, as_json=as_json)
    except KeyboardInterrupt:
        return _report("Interrupted", "interrupted", EXIT_INTERRUPTED, as_json=as_json)
    except BrokenPipeError:
        raise
    except Exception as exc:
        # A bug, not a finding: never exit 1 ("a check found a problem") for it.
        import traceback

        traceback.print_exc()
        message = f"internal error: {type(exc).__name__}: {exc}"
        return _report("InternalError", message, EXIT_INTERNAL, as_json=as_json)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    _tolerant_stdout()
    try:
        return _dispatch(words, _wants_json(words))
    except BrokenPipeError:
        # The reader left (`| head`): point stdout at /dev/null so the interpreter's final
        # flush does not fail a second time and turn a clean exit into an error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
