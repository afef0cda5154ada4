"""A real virtualenv, as a Docker image would have it: pip-installed psutil, pycs deleted, fixed.

One test, one venv for the session (pip's download cache is reused). It shows the whole
Airflow-image story end to end: ok -> ``find -name '*.pyc' -delete`` -> missing -> ``--fix`` ->
ok, and that the importer then really loads psutil from the cache (``python -v`` says
"matches" for each pyc it accepts) where before it compiled the sources.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.linux_only


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The image builder's pip writes pycs; a developer's PYTHONDONTWRITEBYTECODE must not leak in.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.pop("PYTHONPYCACHEPREFIX", None)
    env.pop("PYTHONPATH", None)
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="session")
def venv_site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(venv python, its site-packages) with psutil installed by pip."""
    root = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120, env=_env())
    python = root / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "psutil"],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(),
    )
    if install.returncode != 0:
        pytest.skip(f"pip could not install psutil here: {install.stderr.strip()[-300:]}")
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout.strip()
    )
    return python, site


def _forkmem(*args: str) -> subprocess.CompletedProcess[str]:
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return subprocess.run(
        [sys.executable, "-m", "forkmem", "bytecode", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def _psutil_sources_loaded_from_cache(python: Path, site: Path) -> tuple[set[str], set[str]]:
    """Import psutil with -v -B: (modules whose pyc matched, modules compiled from source)."""
    out = subprocess.run(
        [str(python), "-v", "-B", "-c", "import psutil"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    ).stderr
    pkg = re.escape(str(site / "psutil"))
    matched = set(re.findall(rf"# {pkg}/__pycache__/\S+\.pyc matches ({pkg}/\S+\.py)", out))
    compiled = set(re.findall(rf"# code object from '?({pkg}/[^'\s]+\.py)'?$", out, re.M))
    return matched, compiled


def test_venv_pycs_deleted_then_fixed(venv_site: tuple[Path, Path]) -> None:
    from forkmem.bytecode import check_bytecode

    python, site = venv_site
    # pip compiled everything it installed.
    fresh = check_bytecode(paths=[site])
    assert fresh.ok, fresh.summary()
    assert fresh.counts["ok"] > 100
    assert _forkmem(str(site)).returncode == 0

    # What the Airflow 3.0-3.1.3 images did at build time.
    deleted = 0
    for pyc in site.rglob("*.pyc"):
        pyc.unlink()
        deleted += 1
    assert deleted >= fresh.counts["ok"]
    broken = check_bytecode(paths=[site])
    assert broken.counts["missing"] == fresh.counts["ok"]
    assert broken.counts["ok"] == 0
    matched, compiled = _psutil_sources_loaded_from_cache(python, site)
    assert not matched
    assert str(site / "psutil" / "__init__.py") in compiled
    result = _forkmem(str(site))
    assert result.returncode == 1
    assert f"{fresh.counts['ok']} missing" in result.stdout

    fixed = _forkmem("--fix", str(site))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert check_bytecode(paths=[site]).counts == fresh.counts

    # The importer now takes psutil's code from the cache instead of compiling it.
    matched, compiled = _psutil_sources_loaded_from_cache(python, site)
    assert str(site / "psutil" / "__init__.py") in matched
    assert not compiled & matched
    assert not compiled, f"still compiled from source: {sorted(compiled)}"
