"""--fix never writes out of its tree: symlinks, races, FIFOs, non-Python files."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import forkmem
from _bytecode_trees import snapshot, write
from forkmem import _confine
from forkmem.bytecode import check_bytecode, compile_bytecode

pytestmark = pytest.mark.linux_only


@pytest.fixture
def attack(tmp_path: Path) -> tuple[Path, Path]:
    """An attacker's tree whose __pycache__ points at a victim package's __pycache__."""
    victim = tmp_path / "victim"
    write(victim / "mod.py", "GENUINE = True\n")
    (victim / "__pycache__").mkdir()
    tree = tmp_path / "tree"
    write(tree / "mod.py", "GENUINE = False  # the attacker's code\n")
    os.symlink(victim / "__pycache__", tree / "__pycache__")
    return tree, victim


@pytest.mark.parametrize("workers", [0, 2])
def test_fix_never_writes_through_a_symlinked_pycache(
    attack: tuple[Path, Path], workers: int
) -> None:
    # Regression: py_compile followed tree/__pycache__ and wrote a pyc of the attacker's source
    # into the victim's cache, which the victim's next import would have run.
    tree, victim = attack
    before = snapshot(victim)
    report = check_bytecode(paths=[tree])
    (row,) = report.files
    assert row.status == "unsafe"
    assert "outside the tree" in row.reason
    assert not report.ok
    result = compile_bytecode(report, workers=workers)
    assert result.written == ()
    (failure,) = result.failed
    assert "refused" in failure.error
    assert snapshot(victim) == before


def test_fix_never_writes_into_a_source_directory_reached_by_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside / "pkg" / "mod.py", "x = 1\n")
    tree = tmp_path / "tree"
    tree.mkdir()
    os.symlink(outside / "pkg", tree / "pkg")
    before = snapshot(outside)
    report = check_bytecode(paths=[tree])
    assert [f.status for f in report.files] == ["unsafe"]
    assert compile_bytecode(report).failed
    assert snapshot(outside) == before


def test_a_symlink_that_stays_inside_the_tree_is_written_through(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    write(tree / "mod.py", "x = 1\n")
    (tree / "caches").mkdir()
    os.symlink(tree / "caches", tree / "__pycache__")
    report = check_bytecode(paths=[tree])
    assert [f.status for f in report.files] == ["missing"]
    result = compile_bytecode(report)
    assert result.ok
    assert [p.name for p in (tree / "caches").iterdir()] == [
        Path(importlib.util.cache_from_source(str(tree / "mod.py"))).name
    ]
    assert check_bytecode(paths=[tree]).ok


def test_a_directory_swapped_for_a_symlink_after_the_check_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race the descriptor walk closes: the path resolved inside the tree, then a component
    # became a symlink. Simulated by a realpath() that no longer sees the link.
    root = tmp_path / "tree"
    root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, root / "pkg")
    monkeypatch.setattr(_confine.os.path, "realpath", os.path.abspath)
    with pytest.raises(_confine.Refused, match="symlink or not a directory"):
        _confine.write(str(root), str(root / "pkg" / "__pycache__" / "m.pyc"), b"x", 0o644)
    assert list(outside.iterdir()) == []


def test_confined_write_creates_missing_directories_and_replaces_atomically(
    tmp_path: Path,
) -> None:
    root = str(tmp_path)
    target = tmp_path / "a" / "__pycache__" / "m.pyc"
    _confine.write(root, str(target), b"first", 0o644)
    _confine.write(root, str(target), b"second", 0o644)
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["m.pyc"]  # no temporary left
    with pytest.raises(_confine.Refused, match="outside"):
        _confine.write(str(tmp_path / "a"), str(tmp_path / "elsewhere.pyc"), b"x", 0o644)


def _cli(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run(
        [sys.executable, "-m", "forkmem", "bytecode", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_fix_skips_and_reports_a_fifo_named_like_a_source(tmp_path: Path) -> None:
    # Regression: --fix on a FIFO named x.py blocked forever in open().
    tree = tmp_path / "tree"
    write(tree / "real.py", "x = 1\n")
    os.mkfifo(tree / "x.py")
    os.mkfifo(tree / "direct.py")
    (tree / "__pycache__").mkdir()
    tag = sys.implementation.cache_tag
    os.mkfifo(tree / "__pycache__" / f"real.{tag}.pyc")  # a FIFO where the pyc should be
    for argv in ([str(tree)], [str(tree / "direct.py")]):
        proc = _cli("--fix", "--all", *argv)  # the timeout fails the test instead of hanging
        assert "Traceback" not in proc.stderr
        assert "a FIFO" in proc.stdout
    report = check_bytecode(paths=[tree])
    assert {p.path: p.reason for p in report.problems} == {
        str(tree / "x.py"): "a FIFO: skipped",
        str(tree / "direct.py"): "a FIFO: skipped",
    }
    (real,) = report.files
    assert real.status == "stale"  # the FIFO pyc reads as empty, never blocks
    (failure,) = compile_bytecode(report).failed
    assert "refused" in failure.error  # not replaced: it may be there on purpose


def test_a_device_named_like_a_source_is_never_opened(tmp_path: Path) -> None:
    os.symlink("/dev/zero", tmp_path / "zero.py")
    report = check_bytecode(paths=[tmp_path])
    assert [p.reason for p in report.problems] == ["a character device: skipped"]
    assert report.files == ()


def test_a_non_python_file_is_an_error_not_a_clean_bill(tmp_path: Path) -> None:
    # Regression: `forkmem bytecode README.txt` checked nothing and said every source was fine.
    readme = write(tmp_path / "README.txt", "hello\n")
    with pytest.raises(forkmem.InvalidArgument, match="not a directory nor a Python source"):
        check_bytecode(paths=[readme])
    proc = _cli(str(readme))
    assert proc.returncode == 2
    assert "not a directory nor a Python source" in proc.stderr
    assert "every source file has a valid pyc" not in proc.stdout
