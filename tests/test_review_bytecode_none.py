"""compile_bytecode(None) is bad input, not "compile every loaded module" (it writes files)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def test_compile_bytecode_none_is_invalid_and_writes_nothing(tmp_path: Path) -> None:
    # A real fresh interpreter that has imported a module with no pyc: with the old code
    # compile_bytecode(None) quietly compiled every loaded module, this one included.
    (tmp_path / "appmod.py").write_text("X = 1\n")
    script = textwrap.dedent(
        """
        import appmod, forkmem
        try:
            forkmem.compile_bytecode(None)
        except forkmem.InvalidArgument as exc:
            assert isinstance(exc, ValueError)
            print("invalid:", exc)
        else:
            print("accepted")
        """
    )
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": path}
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("invalid:"), proc.stdout
    assert not (tmp_path / "__pycache__").exists()
