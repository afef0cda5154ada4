"""``forkmem doctor PID`` reads the target's ``.pth`` files: a FIFO or a device there is skipped.

The target's site-packages belongs to the target's user; the operator runs the doctor as root.
A FIFO named ``x.pth`` used to block the doctor forever in ``open()``, and a ``.pth`` linked to
``/dev/zero`` made it read without end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.linux_only

# The doctor runs in its own interpreter with its address space capped, so a regression reads
# /dev/zero into a MemoryError rather than into the machine's memory.
DOCTOR = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
    from forkmem.cli import main
    raise SystemExit(main(["doctor", sys.argv[1], "--json"]))
    """
)


def test_a_fifo_or_device_pth_is_never_read(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    (site,) = env_dir.glob("lib/python3.*/site-packages")
    (tmp_path / "extra").mkdir()
    (site / "good.pth").write_text(str(tmp_path / "extra") + "\n")
    environ = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    target = subprocess.Popen(
        [str(env_dir / "bin" / "python"), "-c", "print('up', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environ,
    )
    try:
        assert target.stdout is not None
        assert target.stdout.readline().strip() == "up"
        # Planted once the target runs (its own start-up would block on the FIFO too).
        os.mkfifo(site / "blocks.pth")
        (site / "endless.pth").symlink_to("/dev/zero")
        proc = subprocess.run(
            [sys.executable, "-c", DOCTOR, str(target.pid)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        target.kill()
        target.wait(10)
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    found = {f["name"]: f for f in json.loads(proc.stdout)["findings"]}
    paths = found["bytecode"]["data"]["paths"]
    assert str(site) in paths
    assert str(tmp_path / "extra") in paths  # the regular .pth is still read
