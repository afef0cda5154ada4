"""Pool scenarios that need a fresh interpreter each (one fork server per process).

A scenario is a few modules written into a folder: ``fs_app.py`` (the script, run with one
argument) and the modules it imports. The script prints one JSON line last; `run_app` returns it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def write_app(directory: Path, app: str, **modules: str) -> Path:
    """Write ``fs_app.py`` and ``modules`` (name: source) into ``directory``; return its path."""
    for name, source in modules.items():
        (directory / f"{name}.py").write_text(source)
    path = directory / "fs_app.py"
    path.write_text(app)
    return path


def run_app(path: Path, arg: str, *python_args: str, timeout: float = 60) -> Any:
    """Run the script with ``arg`` (and interpreter options ``python_args``); its JSON result."""
    # The fork server finds the scenario's modules through PYTHONPATH (3.10-3.13 do not pass it
    # the parent's sys.path); whatever PYTHONPATH already names (an uninstalled forkmem) stays.
    search = os.pathsep.join(filter(None, [str(path.parent), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, *python_args, str(path), arg],
        env=dict(os.environ, PYTHONPATH=search),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])
