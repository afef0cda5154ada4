"""``forkmem doctor PID`` against real target processes whose files or start-up are hostile.

The target's site-packages belongs to the target's user; the operator runs the doctor as root.
A FIFO named ``x.pth`` used to block the doctor forever in ``open()``, and a ``.pth`` linked to
``/dev/zero`` made it read without end. A ``python -m``/``-c`` target started in ``/`` (systemd's
default working directory) had the whole filesystem walked as its script directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
import venv
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
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


@contextlib.contextmanager
def _target(python: str, cwd: str | None = None) -> Iterator[int]:
    environ = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    proc = subprocess.Popen(
        [python, "-c", "print('up', flush=True); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=environ,
        cwd=cwd,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "up"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(10)


def _doctor(pid: int) -> dict[str, Any]:
    # The old code hung (a FIFO) or walked / for over a minute: the timeout makes it a failure.
    proc = subprocess.run(
        [sys.executable, "-c", DOCTOR, str(pid)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    return {f["name"]: f for f in json.loads(proc.stdout)["findings"]}


def test_a_fifo_or_device_pth_is_never_read(tmp_path: Path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    (site,) = env_dir.glob("lib/python3.*/site-packages")
    (tmp_path / "extra").mkdir()
    (site / "good.pth").write_text(str(tmp_path / "extra") + "\n")
    with _target(str(env_dir / "bin" / "python")) as pid:
        # Planted once the target runs (its own start-up would block on the FIFO too).
        os.mkfifo(site / "blocks.pth")
        (site / "endless.pth").symlink_to("/dev/zero")
        found = _doctor(pid)
    paths = found["bytecode"]["data"]["paths"]
    assert str(site) in paths
    assert str(tmp_path / "extra") in paths  # the regular .pth is still read


def test_a_target_whose_cwd_is_the_root_is_not_walked_from_the_root() -> None:
    with _target(sys.executable, cwd="/") as pid:
        found = _doctor(pid)
    paths = found["bytecode"]["data"].get("paths", [])
    assert "/" not in paths
    assert paths, "its site-packages are still checked"
