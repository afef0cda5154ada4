"""`forkmem watch --plot` refuses a path it cannot write before watching, not after."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path


def _watch(plot: str) -> subprocess.CompletedProcess[str]:
    # A 120 s watch: the old code sampled all of it, then failed on the path and printed no
    # report. The timeout turns that into a failure without waiting the whole watch.
    argv = [sys.executable, "-m", "forkmem", "watch", str(os.getpid()), "--duration", "120"]
    return subprocess.run(
        [*argv, "--plot", plot], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing-dir/growth.png", "no such directory"),
        ("growth.pdf", ".png or .svg"),
        ("a-dir.png", "is a directory"),
    ],
)
def test_a_bad_plot_path_fails_before_the_watch(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "a-dir.png").mkdir()
    proc = _watch(str(tmp_path / name))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-dir.png"]  # nothing written
