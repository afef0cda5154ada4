"""``forkmem doctor PID``: another process's Python, bytecode cache and cgroup, from /proc only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import venv
from typing import TYPE_CHECKING, Any

import pytest

from _memory_children import forked
from forkmem.cli import main
from forkmem.doctor import diagnose

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from _memory_children import Pipe

pytestmark = pytest.mark.linux_only

WAIT = "import time, sys; print('up', flush=True); time.sleep(60)"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A venv whose site-packages holds one package with pycs and one without."""
    root = tmp_path_factory.mktemp("doctor-pid")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=False, symlinks=True)
    (site,) = env_dir.glob("lib/python3.*/site-packages")
    cached = site / "cachedpkg"
    cached.mkdir()
    (cached / "__init__.py").write_text("X = 1\n")
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(cached)],
        check=True,
        env=dict(os.environ, PYTHONDONTWRITEBYTECODE=""),
    )
    bare = site / "barepkg"
    bare.mkdir()
    for i in range(3):
        (bare / f"m{i}.py").write_text(f"Y = {i}\n")
    app = root / "app"
    app.mkdir()
    marker = root / "imported"
    # Importing this would leave a marker: the doctor must never import the target's code.
    (app / "trap.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    (app / "server.py").write_text(WAIT + "\n")
    return {"venv": env_dir, "site": site, "app": app, "marker": marker, "root": root}


@pytest.fixture
def target(env: dict[str, Path]) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(*argv: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        environ = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        environ.pop("VIRTUAL_ENV", None)
        environ.update(extra_env or {})
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, text=True, env=environ, cwd=str(env["root"])
        )
        procs.append(proc)
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "up"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait(10)


def _findings(pid: int, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["doctor", str(pid), "--json"])
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "one JSON line"
    data = json.loads(out)
    return code, {f["name"]: f for f in data["findings"]}


def test_a_venv_process_is_checked_from_outside(
    env: dict[str, Path], target: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    python = env["venv"] / "bin" / "python"
    proc = target(
        str(python), str(env["app"] / "server.py"), extra_env={"PYTHONPATH": str(env["app"])}
    )
    code, found = _findings(proc.pid, capsys)
    assert code == 1  # the uncached package is a warning
    runtime = found["runtime"]
    assert runtime["level"] == "ok"
    assert runtime["data"]["version"] == f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert runtime["data"]["venv"] == str(env["venv"])
    bytecode = found["bytecode"]
    assert bytecode["level"] == "warn"
    assert str(env["site"]) in bytecode["data"]["paths"]
    assert str(env["app"]) in bytecode["data"]["paths"]
    assert bytecode["data"]["counts"]["missing"] >= 3 + 2  # barepkg and the app's two modules
    assert "barepkg" not in json.dumps(found["runtime"])
    assert found["dont_write_bytecode"]["level"] == "ok"
    assert found["cgroup"]["level"] in ("ok", "info", "warn")
    assert "inside_only" in found
    assert not env["marker"].exists(), "the target's code was imported"


def test_the_minus_b_flag_and_environment_are_read(
    env: dict[str, Path], target: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    proc = target(sys.executable, "-uB", "-c", WAIT)
    _, found = _findings(proc.pid, capsys)
    assert found["dont_write_bytecode"]["data"]["-B"] is True
    proc = target(sys.executable, "-c", WAIT, extra_env={"PYTHONDONTWRITEBYTECODE": "1"})
    _, found = _findings(proc.pid, capsys)
    assert "PYTHONDONTWRITEBYTECODE is set" in found["dont_write_bytecode"]["value"]


def test_a_process_that_is_not_python(target: Any, capsys: pytest.CaptureFixture[str]) -> None:
    proc = target("bash", "-c", "echo up; exec sleep 60")
    time.sleep(0.2)  # let bash exec sleep
    code, found = _findings(proc.pid, capsys)
    assert "not a Python process" in found["runtime"]["value"]
    assert found["bytecode"]["level"] == "info"
    assert code == 0


def _doctor_parent_as_nobody(pipe: Pipe) -> None:
    parent = os.getppid()
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    result = diagnose(pid=parent)
    pipe.send({f.name: f.value for f in result.findings})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid() to an unprivileged uid")
def test_fields_it_cannot_read_are_reported_as_such() -> None:
    with forked(_doctor_parent_as_nobody) as child:
        found = child.recv()
    assert "permission denied" in found["unreadable"]
    assert "/proc/" in found["unreadable"]
    assert "not readable" in found["dont_write_bytecode"]


def test_a_missing_pid_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", str(2**22 + 13)]) == 2
    assert "no process" in capsys.readouterr().err


def test_own_pid_is_the_inside_view() -> None:
    names = [f.name for f in diagnose(pid=os.getpid()).findings]
    assert "gc" in names
    assert "start_method" in names
