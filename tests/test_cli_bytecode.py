"""``forkmem bytecode`` on real trees: exit codes, JSON, --fix, --cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _bytecode_trees import pyc, snapshot, write
from forkmem.cli import main
from forkmem.cli._bytecode import plain_args
from forkmem.cli._parser import build_parser

pytestmark = pytest.mark.linux_only


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "app"
    write(root / "app" / "__init__.py", "")
    write(root / "app" / "models.py", "class Model:\n    pass\n")
    # A module whose top level would leave a trace if anything ran it.
    write(
        root / "app" / "side_effect.py",
        f"open({str(tmp_path / 'RAN')!r}, 'w').close()\n",
    )
    return root


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["bytecode", *argv])
    return code, capsys.readouterr().out


def test_exit_1_and_listing_when_missing(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = snapshot(tree.parent)
    code, out = run_cli(capsys, str(tree))
    assert code == 1
    assert "3 missing" in out
    assert "side_effect.py" in out
    assert f"fix: forkmem bytecode --fix {tree}" in out
    assert snapshot(tree.parent) == before, "no file appears without --fix"
    assert not (tree.parent / "RAN").exists()


def test_exit_0_when_all_cached(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for src in tree.rglob("*.py"):
        pyc(src)
    code, out = run_cli(capsys, str(tree))
    assert code == 0
    assert "3 ok" in out
    assert "every source file has a valid pyc" in out


def test_json_output(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pyc(tree / "app" / "models.py")
    code, out = run_cli(capsys, "--json", str(tree / "app"))
    assert code == 1
    data = json.loads(out)
    assert data["counts"] == {
        "ok": 1,
        "missing": 2,
        "stale": 0,
        "unwritable": 0,
        "unsafe": 0,
        "sourceless": 0,
    }
    assert data["fix"] is None
    assert data["cost"] is None
    assert {Path(f["source"]).name: f["status"] for f in data["files"]} == {
        "__init__.py": "missing",
        "models.py": "ok",
        "side_effect.py": "missing",
    }


def test_fix_compiles_then_exit_0(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "--fix", "--json", str(tree))
    assert code == 0
    data = json.loads(out)
    assert data["ok"] is True
    assert data["fix"]["before"]["missing"] == 3
    assert len(data["fix"]["written"]) == 3
    assert all(Path(p).is_file() for p in data["fix"]["written"])
    assert not (tree.parent / "RAN").exists(), "compiling never executes"
    assert run_cli(capsys, str(tree))[0] == 0


def test_fix_with_a_syntax_error_stays_1(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tree / "app" / "broken.py", "def (:\n")
    code, out = run_cli(capsys, "--fix", str(tree))
    assert code == 1
    assert "wrote 3 pyc files, 1 failed (1 syntax errors)" in out
    assert "syntax error:" in out
    assert "broken.py" in out


def test_optimize_level(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for src in tree.rglob("*.py"):
        pyc(src, optimize=2)
    assert run_cli(capsys, "--optimize", "2", str(tree))[0] == 0
    assert run_cli(capsys, "--optimize", "0", str(tree))[0] == 1


def test_cost_measures_without_writing(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = "".join(f"def f{i}(x):\n    return [x * {i} for _ in range(3)]\n" for i in range(2000))
    write(tree / "app" / "big.py", body)
    before = snapshot(tree.parent)
    code, out = run_cli(capsys, "--cost", "--json", str(tree))
    assert code == 1
    cost = json.loads(out)["cost"]
    assert cost["files"] == 4
    assert cost["failed"] == 0
    assert cost["source_bytes"] == sum(p.stat().st_size for p in tree.rglob("*.py"))
    assert cost["compile_cpu_s"] > 0
    assert cost["memory_source"] in ("smaps_rollup", "ru_maxrss")
    # 2000 functions' code objects are kept alive: well over 100 KiB of private memory.
    assert cost["compile_private_bytes"] > 100 * 1024
    assert snapshot(tree.parent) == before, "--cost writes nothing into the tree"
    assert not (tree.parent / "RAN").exists()


def test_cost_human_and_nothing_to_measure(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_cli(capsys, "--cost", str(tree))
    assert code == 1
    assert "compiling 3 files" in out
    assert "loading the same from bytecode" in out
    for src in tree.rglob("*.py"):
        pyc(src)
    code, out = run_cli(capsys, "--cost", str(tree))
    assert code == 0
    assert "nothing to measure" in out


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bytecode", str(tmp_path / "missing")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    assert main(["bytecode", "--optimize", "5", str(tmp_path)]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert main(["bytecode", "--workers", "-1", str(tmp_path)]) == 2


def test_real_process_exit_codes(tree: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    cmd = [sys.executable, "-m", "forkmem", "bytecode"]
    missing = subprocess.run([*cmd, str(tree)], env=env, capture_output=True, timeout=60)
    assert missing.returncode == 1, missing.stderr
    fixed = subprocess.run([*cmd, "--fix", str(tree)], env=env, capture_output=True, timeout=60)
    assert fixed.returncode == 0, fixed.stderr
    usage = subprocess.run([*cmd, "--bogus"], env=env, capture_output=True, timeout=60)
    assert usage.returncode == 2


def test_default_paths_are_site_packages(capsys: pytest.CaptureFixture[str]) -> None:
    from forkmem.bytecode import site_dirs

    dirs = site_dirs()
    assert dirs
    code, out = run_cli(capsys, "--json")
    data = json.loads(out)
    assert data["paths"] == [os.path.abspath(d) for d in dirs]
    assert code == (0 if data["ok"] else 1)


@pytest.mark.parametrize(
    "paths",
    [[], ["app"], ["a b", "c"], [""], ["@args", "x=1", "bytecode", "ab-"]],
)
def test_a_command_line_of_paths_reads_as_the_parser_reads_it(paths: list[str]) -> None:
    # `forkmem bytecode PATH...` skips argparse (start-up); its namespace must be argparse's.
    expected = vars(build_parser("bytecode").parse_args(["bytecode", *paths]))
    assert vars(plain_args(paths)) == expected
    assert vars(build_parser().parse_args(["bytecode", *paths])) == expected


def test_plain_and_parsed_command_lines_print_the_same(
    tree: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pyc(tree / "app" / "models.py")
    plain = run_cli(capsys, str(tree), str(tree / "app" / "models.py"))
    # "--" sends the same paths through argparse.
    assert run_cli(capsys, "--", str(tree), str(tree / "app" / "models.py")) == plain
    assert plain[0] == 1
    assert "2 missing" in plain[1]


def test_the_plain_check_loads_neither_argparse_nor_typing(tree: Path) -> None:
    # What a fresh `forkmem bytecode TREE` process imports beyond the interpreter's own start-up
    # (a fully cached tree: listing what is missing may load more, such as shlex).
    for src in tree.rglob("*.py"):
        pyc(src)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    # importlib.util is what `python -m` itself loads before forkmem (on 3.10 with contextlib).
    probe = (
        "import importlib.util, sys; before = set(sys.modules); from forkmem.cli import main;"
        "code = main({}); print(code, ' '.join(sorted(set(sys.modules) - before)))"
    )
    heavy = {"argparse", "typing", "re", "dataclasses", "contextlib", "gettext", "shutil"}
    for argv in (["bytecode", str(tree)], ["bytecode", "--all", str(tree)]):
        proc = subprocess.run(
            [sys.executable, "-c", probe.format(argv)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        code, loaded = proc.stdout.splitlines()[-1].split(" ", 1)
        assert code == "0"
        if "--all" in argv:
            assert "argparse" in loaded.split(), "an option goes through the parser"
        else:
            assert heavy & set(loaded.split()) == set(), loaded
