"""``forkmem memory``: tables, stable JSON and exit codes, on real processes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

import forkmem
from _memory_children import Pipe, forked, reap, sleeper
from forkmem.cli import main

pytestmark = pytest.mark.linux_only

MEMORY_KEYS = {
    "pid",
    "rss",
    "pss",
    "uss",
    "shared_clean",
    "shared_dirty",
    "private_clean",
    "private_dirty",
    "swap",
    "swap_pss",
    "pss_anon",
    "pss_file",
    "pss_shmem",
    "pss_dirty",
    "source",
    "command",
    "ppid",
    "cmdline",
    "peak_rss",
    "shared_with_parent",
    "share_of_parent",
    "role",
}


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    assert main(["memory", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_table_for_this_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["PID", "COMMAND", "RSS", "PSS", "USS"]
    assert lines[1].split()[0] == str(os.getpid())
    assert "MiB" in lines[1]


def test_json_is_stable_and_matches_the_api(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys)
    assert isinstance(data, dict)
    assert set(data) == {"time", "root", "tree", "fast", "processes", "totals", "skipped", "denied"}
    (proc,) = data["processes"]
    assert set(proc) == MEMORY_KEYS
    assert proc["pid"] == data["root"] == os.getpid()
    assert proc["source"] == "smaps_rollup"
    assert abs(proc["rss"] - forkmem.memory().rss) < 4 * 1024 * 1024
    assert data["totals"] == {"rss": proc["rss"], "pss": proc["pss"], "uss": proc["uss"]}


def test_tree_json_and_table(capsys: pytest.CaptureFixture[str]) -> None:
    with forked(sleeper) as child:
        assert child.recv() == "ready"
        data = _json(capsys, str(os.getpid()), "--tree")
        assert main(["mem", "--tree"]) == 0
        table = capsys.readouterr().out
    assert isinstance(data, dict)
    pids = [p["pid"] for p in data["processes"]]
    assert pids[0] == os.getpid()
    assert child.pid in pids
    totals = data["totals"]
    assert totals["rss"] == sum(p["rss"] for p in data["processes"])
    assert totals["pss"] == sum(p["pss"] for p in data["processes"])
    assert totals["shared_savings"] == totals["rss"] - totals["pss"] > 0
    assert "TOTAL (" in table
    assert "shared savings" in table
    assert str(child.pid) in table


def test_fast_tier(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, "--fast")
    assert isinstance(data, dict)
    (proc,) = data["processes"]
    assert proc["source"] == "status"
    assert proc["rss"] == proc["rss_anon"] + proc["rss_file"] + proc["rss_shmem"]
    assert main(["memory", "--fast"]) == 0
    assert "ANON" in capsys.readouterr().out


def test_fast_tree_lists_descendants(capsys: pytest.CaptureFixture[str]) -> None:
    with forked(sleeper) as child:
        assert child.recv() == "ready"
        data = _json(capsys, "--fast", "--tree")
    assert isinstance(data, dict)
    pids = [p["pid"] for p in data["processes"]]
    assert pids[0] == os.getpid()
    assert child.pid in pids
    assert {p["source"] for p in data["processes"]} == {"status"}
    assert data["totals"] == {"rss": sum(p["rss"] for p in data["processes"])}
    assert data["denied"] == 0


def test_missing_pid_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    reap(pid)
    assert main(["memory", str(pid)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"forkmem: error: no process {pid}\n"


def _run_main_as_nobody(pipe: Pipe) -> None:
    parent = os.getppid()
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["memory", str(parent)])
    pipe.send({"code": code, "err": err.getvalue()})


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to setuid() to an unprivileged uid")
def test_no_permission_exits_1_with_one_line() -> None:
    with forked(_run_main_as_nobody) as child:
        result = child.recv()
    assert result["code"] == 1
    assert result["err"].count("\n") == 1
    assert result["err"].startswith("forkmem: error: no permission to read /proc/")


def test_bad_pid_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "0"]) == 2
    assert "positive" in capsys.readouterr().err


def test_cgroup_view(capsys: pytest.CaptureFixture[str]) -> None:
    data = _json(capsys, "--cgroup")
    expected = forkmem.cgroup_memory()
    if expected is None:
        assert data is None
        return
    assert isinstance(data, dict)
    assert data["version"] == expected.version
    assert data["directory"] == expected.directory
    assert isinstance(data["stat"], dict)
    assert main(["memory", "--cgroup"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cgroup v{expected.version} ")
    assert "current" in out


def test_console_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "forkmem", "memory", "--json", "--fast"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["processes"][0]["rss"] > 0
