"""The ``forkmem`` command line.

Each sub-command lives in its own module with a ``register(subparsers)`` function that adds
its parser and sets ``func`` (``args -> exit code``); `forkmem.cli._parser` builds the parser.
Exit codes: 0 fine, 1 a check found a problem, 2 usage or input error, 3 an internal error (a
bug in forkmem), 130 interrupted.

Errors are reported here, once for every command: a line on stderr, or with ``--json`` one
JSON object on stdout, ``{"error": {"type": ..., "message": ..., "exit_code": ...}}``.
"""

from __future__ import annotations

import codecs
import os
import sys

from forkmem.errors import AccessDenied, ForkmemError

TYPE_CHECKING = False  # importing typing would cost every command's start-up a few ms
if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence
    from types import SimpleNamespace
    from typing import Any

__all__ = ["main"]

EXIT_PROBLEM = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130


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
        # Not contextlib.suppress: contextlib (with functools, collections) costs ~2 ms.
        try:  # noqa: SIM105
            reconfigure(errors=_ERRORS)
        except (ValueError, OSError):
            pass  # a closed or detached stream has nothing to protect


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


def _plain_check(argv: list[str]) -> SimpleNamespace | None:
    """The arguments of ``forkmem bytecode [PATH ...]``, a command line without any option.

    That plain check is what a Dockerfile ``RUN`` or a CI step runs, each time in a fresh
    process: reading its words here spares it argparse and the help formatter it builds
    (with re, gettext and shutil, about a sixth of that process's CPU). A word that starts
    with ``-`` (an option, ``--``, a negative number) goes through the parser as before.
    """
    if argv[:1] != ["bytecode"] or any(word.startswith("-") for word in argv[1:]):
        return None
    # Lazy: the other commands do not pay for loading the check.
    from forkmem.cli._bytecode import plain_args

    return plain_args(argv[1:])


def _dispatch(argv: list[str], as_json: bool) -> int:
    args: argparse.Namespace | SimpleNamespace | None = _plain_check(argv)
    if args is None:
        # Lazy: argparse loads only for a command line that needs it (see _plain_check).
        from forkmem.cli import _parser

        try:
            args = _parser.build_parser(_parser.command_of(argv)).parse_args(argv)
        except _parser.UsageError as exc:
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
