"""``forkmem watch``: growth rates and their cause, on real trees growing at a known rate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

import forkmem
from forkmem._growth import slope
from forkmem.cli import main

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.linux_only

TREES = Path(__file__).with_name("_growth_trees.py")
RATE = 2.0  # MiB/s, the leak
TRUTH = RATE * 3600  # MiB/h


@pytest.fixture
def grow() -> Iterator[Any]:
    started: list[subprocess.Popen[str]] = []

    def start(kind: str, rate: float = RATE, *extra: str) -> dict[str, Any]:
        proc = subprocess.Popen(
            [sys.executable, str(TREES), kind, str(rate), *extra],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        info: dict[str, Any] = json.loads(proc.stdout.readline())
        return info

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def _watch(pid: int, *extra: str) -> dict[str, Any]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "forkmem",
            "watch",
            str(pid),
            "--duration",
            "6",
            "--interval",
            "0.25",
            "--json",
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def test_a_leaking_process_is_named_with_its_rate(grow: Any) -> None:
    tree = grow("leak")
    report = _watch(tree["root"])
    primary = report["primary"]
    assert primary["kind"] == "leak", report
    assert primary["pid"] == tree["children"][0]
    assert abs(primary["rate_mib_per_hour"] - TRUTH) <= 0.25 * TRUTH, report
    assert "max_private_memory" in primary["fix"]
    assert not [c for c in report["causes"] if c["kind"] == "cow"], report


def test_children_copying_their_inherited_heap_is_copy_on_write(grow: Any) -> None:
    tree = grow("cow")
    report = _watch(tree["root"])
    primary = report["primary"]
    assert primary["kind"] == "cow", report
    truth = 2 * TRUTH  # two children, each copying RATE MiB/s
    assert abs(primary["rate_mib_per_hour"] - truth) <= 0.25 * truth, report
    assert "freeze" in primary["fix"]
    assert not [c for c in report["causes"] if c["kind"] == "leak"], report
    for child in tree["children"]:
        assert str(child) in primary["detail"]


def test_kernel_memory_growing_while_processes_do_not_is_named(grow: Any, tmp_path: Path) -> None:
    cg = forkmem.cgroup_memory()
    if cg is None or cg.kernel is None:
        pytest.skip("no readable cgroup kernel-memory counter here")
    tree = grow("dentries", RATE, str(tmp_path))
    report = _watch(tree["root"])
    if report["primary"] is None:
        # The kernel counter is the whole cgroup's: other processes freeing slab in the same
        # 6 s (a parallel test's children exiting) can hide the growth; one more window decides.
        report = _watch(tree["root"])
    kinds = [c["kind"] for c in report["causes"]]
    assert report["primary"] is not None, report
    assert report["primary"]["kind"] == "kernel", report
    assert "bytecode --fix" in report["primary"]["fix"]
    assert "leak" not in kinds, report
    assert "cow" not in kinds, report


def test_plot_writes_a_png_and_an_svg(grow: Any, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    tree = grow("leak", 1.0)
    for name in ("growth.png", "growth.svg"):
        out = tmp_path / name
        assert (
            main(
                [
                    "watch",
                    str(tree["root"]),
                    "--duration",
                    "1",
                    "--interval",
                    "0.2",
                    "--plot",
                    str(out),
                ]
            )
            == 0
        )
        head = out.read_bytes()[:200]
        assert head.startswith(b"\x89PNG") if name.endswith(".png") else b"<svg" in head


def test_plot_needs_a_known_suffix(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    code = main(["watch", str(os.getpid()), "--duration", "0.3", "--plot", str(tmp_path / "x.gif")])
    assert code == 2
    assert ".png or .svg" in capsys.readouterr().err
    assert not (tmp_path / "x.gif").exists()


def test_plot_without_matplotlib_is_a_typed_error(tmp_path: Path) -> None:
    # A fresh interpreter where importing matplotlib fails, as on an install without the extra.
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from forkmem.cli import main\n"
        f"raise SystemExit(main(['watch', '{os.getpid()}', '--duration', '5', '--plot', "
        f"'{tmp_path / 'g.png'}']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 2
    assert "pip install 'forkmem[plot]'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("argv", [["--duration", "0"], ["--interval", "-1"]])
def test_bad_durations_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["watch", str(os.getpid()), *argv]) == 2
    assert "positive" in capsys.readouterr().err


def test_missing_pid_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["watch", str(2**22 + 7), "--duration", "0.2"]) == 2
    assert "no process" in capsys.readouterr().err


def test_slope_is_least_squares() -> None:
    assert slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert slope([0, 1, 2], [5, 4, 6]) == pytest.approx(0.5)
    assert slope([1.0], [3.0]) == 0.0
    assert slope([2, 2], [1, 9]) == 0.0
