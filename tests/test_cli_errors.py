"""The command line's error contract: one JSON object under --json, exit codes, odd file names."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from forkmem.cli import main
from forkmem.cli._parser import build_parser

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.linux_only


def _commands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    # Aliases ("mem") share their command's parser: one name per parser.
    return sorted({id(p): name for name, p in reversed(sub.choices.items())}.values())


def _only_error(out: str) -> dict[str, object]:
    """stdout holds exactly one JSON object of the documented shape; return its "error"."""
    lines = out.splitlines()
    assert len(lines) == 1, out
    data = json.loads(lines[0])
    assert set(data) == {"error"}
    error = data["error"]
    assert set(error) == {"type", "message", "exit_code"}
    assert isinstance(error["type"], str)
    assert isinstance(error["message"], str)
    assert error["message"]
    return dict(error)


# The positional arguments a command cannot run without.
NEEDS = {"export": ["1"], "watch": ["1"]}


@pytest.mark.parametrize("command", _commands())
def test_every_command_reports_a_usage_error_as_one_json_object(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([command, *NEEDS.get(command, []), "--json", "--no-such-option"]) == 2
    out, err = capsys.readouterr()
    error = _only_error(out)
    assert error == {
        "type": "UsageError",
        "message": "unrecognized arguments: --no-such-option",
        "exit_code": 2,
    }
    assert err == ""


# One input error per command, raised from inside the command (a ForkmemError).
BAD_INPUT = {
    "bytecode": (["bytecode", "/nonexistent/forkmem-test"], "InvalidArgument"),
    "demo": (["demo", "--heap-mib", "1"], "InvalidArgument"),
    "doctor": (["doctor", "--path", "/nonexistent/forkmem-test"], "InvalidArgument"),
    "export": (["export", "0"], "InvalidArgument"),
    "memory": (["memory", "0"], "InvalidArgument"),
    "watch": (["watch", "0"], "InvalidArgument"),
}


def test_the_bad_input_table_covers_every_command() -> None:
    assert sorted(BAD_INPUT) == _commands()


@pytest.mark.parametrize("command", sorted(BAD_INPUT))
def test_every_command_reports_a_typed_error_as_one_json_object(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, kind = BAD_INPUT[command]
    assert main([*argv, "--json"]) == 2
    out, err = capsys.readouterr()
    error = _only_error(out)
    assert error["type"] == kind
    assert error["exit_code"] == 2
    assert err == ""
    # Without --json: one line on stderr, nothing on stdout.
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("forkmem: error: ")
    assert err.count("\n") == 1


def test_a_bug_is_exit_3_never_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(args: argparse.Namespace) -> int:
        raise RuntimeError("oops")

    monkeypatch.setattr("forkmem.cli._doctor.run", broken)
    assert main(["doctor", "--json"]) == 3
    out, err = capsys.readouterr()
    assert _only_error(out) == {
        "type": "InternalError",
        "message": "internal error: RuntimeError: oops",
        "exit_code": 3,
    }
    assert "Traceback" in err  # the traceback goes to stderr for the bug report


def _run(argv: list[str], **env: str) -> subprocess.CompletedProcess[bytes]:
    full = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    full["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "forkmem", *argv], env=full, capture_output=True, timeout=60
    )


def test_json_error_from_a_real_process() -> None:
    proc = _run(["memory", "--json", "999999999"])
    assert proc.returncode == 2
    assert _only_error(proc.stdout.decode())["type"] == "NoSuchProcess"
    assert proc.stderr == b""


@pytest.mark.parametrize("encoding", ["utf-8:strict", "ascii:strict"])
def test_non_utf8_file_names_print_under_a_strict_stdout(tmp_path: Path, encoding: str) -> None:
    # Regression: a name that is not UTF-8 (here Latin-1 "café.py") reached print() as a lone
    # surrogate and a strict stdout raised UnicodeEncodeError: exit 1, the "missing" code.
    root = os.fsencode(tmp_path / "tree")
    os.mkdir(root)
    with open(os.path.join(root, b"caf\xe9.py"), "wb") as f:
        f.write(b"x = 1\n")
    os.symlink(b"nowhere", os.path.join(root, b"dangling-\xff.py"))
    proc = _run(["bytecode", "--all", os.fsdecode(root)], PYTHONIOENCODING=encoding)
    assert proc.returncode == 1, proc.stderr  # one file missing: the honest exit code
    assert b"Traceback" not in proc.stderr
    assert b"caf\xe9.py" in proc.stdout  # the name as it is on disk
    assert b"dangling-\xff.py" in proc.stdout
    as_json = _run(["bytecode", "--json", os.fsdecode(root)], PYTHONIOENCODING=encoding)
    assert as_json.returncode == 1, as_json.stderr
    data = json.loads(as_json.stdout)
    assert os.fsencode(data["files"][0]["source"]).endswith(b"caf\xe9.py")
