"""Helpers the server benchmarks share (run them as scripts: this folder is on sys.path)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop(proc: subprocess.Popen[bytes], grace: float = 30.0, *, group: bool = False) -> None:
    """SIGTERM (graceful: the server reaps its workers), then SIGKILL the whole process group.

    ``group`` sends the SIGTERM to the whole group: Airflow's manager can swallow its own."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, signal.SIGTERM)
            else:
                proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
