"""``--pid-file`` never blocks on a FIFO: the pid file may be the service user's to replace."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path


@pytest.mark.parametrize("command", ["memory", "export"])
def test_a_fifo_pid_file_is_a_usage_error(tmp_path: Path, command: str) -> None:
    fifo = tmp_path / "server.pid"
    os.mkfifo(fifo)
    # The old code opened it and waited for a writer forever; the timeout turns that into a
    # failure.
    proc = subprocess.run(
        [sys.executable, "-m", "forkmem", command, "--pid-file", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "not a regular file" in proc.stderr
    assert "Traceback" not in proc.stderr
