"""``forkmem doctor PID`` of a ``python -m``/``-c`` process started in ``/`` (systemd's default
working directory) does not walk the whole filesystem as its "script directory"."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.linux_only


def test_a_target_whose_cwd_is_the_root_is_not_walked_from_the_root() -> None:
    environ = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    target = subprocess.Popen(
        [sys.executable, "-c", "print('up', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environ,
        cwd="/",
    )
    try:
        assert target.stdout is not None
        assert target.stdout.readline().strip() == "up"
        # The old code checked every .py under / (here: over a minute, 190 MB): the timeout
        # turns that into a failure.
        proc = subprocess.run(
            [sys.executable, "-m", "forkmem", "doctor", str(target.pid), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        target.kill()
        target.wait(10)
    assert proc.returncode in (0, 1), proc.stderr
    found = {f["name"]: f for f in json.loads(proc.stdout)["findings"]}
    paths = found["bytecode"]["data"].get("paths", [])
    assert "/" not in paths
    assert paths, "its site-packages are still checked"
