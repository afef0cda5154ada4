"""``forkmem memory`` for operators: watch mode, selection, sorting, grouping, shared column."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import pytest

from _memory_children import forked, sleeper, touched_map
from forkmem.cli import main

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.linux_only

FORKMEM = [sys.executable, "-m", "forkmem"]


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    assert main(["memory", *argv, "--json"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, "one JSON object per line"
    data = json.loads(out)
    assert isinstance(data, dict)
    return data


@pytest.fixture
def marked_sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process whose command line carries a unique marker, to be found by --match."""
    marker = f"forkmem-marker-{os.getpid()}-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", marker])
    proc.marker = marker  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


def test_watch_piped_to_head_prints_three_tree_objects_and_exits_cleanly() -> None:
    with forked(sleeper) as child:
        assert child.recv() == "ready"
        shell = (
            f"{' '.join(FORKMEM)} memory {os.getpid()} --tree --watch 0.5 --json | head -n 3;"
            ' echo "status=${PIPESTATUS[0]}" >&2'
        )
        proc = subprocess.run(
            ["bash", "-c", shell], capture_output=True, text=True, timeout=60, check=False
        )
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    samples = [json.loads(line) for line in lines]
    for sample in samples:
        pids = [p["pid"] for p in sample["processes"]]
        assert pids[0] == os.getpid()
        assert child.pid in pids
        assert sample["totals"]["pss"] == sum(p["pss"] for p in sample["processes"])
    assert samples[0]["time"] < samples[1]["time"] < samples[2]["time"]
    # Exit status 0 and nothing on stderr: SIGPIPE is a clean end, not a traceback.
    assert proc.stderr.strip() == "status=0"


def test_watch_without_a_terminal_writes_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "--watch", "0.05", "--count", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert all(json.loads(line)["root"] == os.getpid() for line in lines)


def test_watch_redraws_the_table_in_place_on_a_terminal() -> None:
    import pty

    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*FORKMEM, "memory", "--watch", "0.05", "--count", "2"], stdout=follower, stderr=follower
    )
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO once the child closed its end
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(30) == 0
    text = out.decode()
    assert text.count("\x1b[H\x1b[2J") == 2
    assert text.count("PID  COMMAND") == 2


def test_pid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with forked(sleeper) as child:
        assert child.recv() == "ready"
        pid_file = tmp_path / "server.pid"
        pid_file.write_text(f"{child.pid}\n")
        data = _json(capsys, "--pid-file", str(pid_file))
    assert data["root"] == child.pid
    assert [p["pid"] for p in data["processes"]] == [child.pid]


@pytest.mark.parametrize("content", [None, "", "abc", "-3", "0"])
def test_bad_pid_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str | None
) -> None:
    pid_file = tmp_path / "server.pid"
    if content is not None:
        pid_file.write_text(content)
    assert main(["memory", "--pid-file", str(pid_file)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "pid file" in captured.err
    assert "Traceback" not in captured.err


def test_match_searches_the_system_by_command_line(
    marked_sleeper: subprocess.Popen[bytes], capsys: pytest.CaptureFixture[str]
) -> None:
    marker = marked_sleeper.marker  # type: ignore[attr-defined]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        data = _json(capsys, "--match", marker)
        if data["processes"]:
            break
        time.sleep(0.05)
    (proc,) = data["processes"]
    assert proc["pid"] == marked_sleeper.pid
    assert marker in proc["cmdline"]
    assert data["root"] is None


def test_match_within_a_tree(capsys: pytest.CaptureFixture[str]) -> None:
    with forked(sleeper) as child:
        assert child.recv() == "ready"
        data = _json(capsys, str(os.getpid()), "--match", "no-such-command-line-anywhere")
        assert data["processes"] == []
        everything = _json(capsys, str(os.getpid()), "--match", ".")
    assert child.pid in [p["pid"] for p in everything["processes"]]


def test_bad_regex_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "--match", "("]) == 2
    assert "regular expression" in capsys.readouterr().err


def test_children_show_what_they_share_with_their_parent(
    capsys: pytest.CaptureFixture[str],
) -> None:
    buf = touched_map(32 * 1024 * 1024)
    with forked(sleeper) as child:
        assert child.recv() == "ready"
        data = _json(capsys, "--tree")
        assert main(["memory", "--tree"]) == 0
        table = capsys.readouterr().out
    root, *children = data["processes"]
    assert root["role"] == "root"
    assert root["shared_with_parent"] is None
    (mine,) = [p for p in children if p["pid"] == child.pid]
    assert mine["role"] == "child"
    assert mine["ppid"] == os.getpid()
    # The child has written nothing: the 32 MiB map is still shared with us.
    assert mine["shared_with_parent"] >= 32 * 1024 * 1024
    assert 0 < mine["share_of_parent"] <= 1
    assert mine["peak_rss"] >= mine["rss"]
    assert "SHARED" in table.splitlines()[0]
    buf.close()


def test_sort_orders_rows_largest_first(capsys: pytest.CaptureFixture[str]) -> None:
    with forked(sleeper) as child:
        assert child.recv() == "ready"
        # Mapped and written after the fork: 16 MiB private to the parent. (Written before it,
        # the pages would be shared with the sleeper and in neither one's USS.)
        buf = touched_map(16 * 1024 * 1024)
        data = _json(capsys, "--tree", "--sort", "uss")
        by_pid = _json(capsys, "--tree", "--sort", "PID")
    uss = [p["uss"] for p in data["processes"]]
    assert uss == sorted(uss, reverse=True)
    # The parent holds the 16 MiB privately, the sleeper does not. (Not "first of all": the
    # tree also holds children earlier tests left, e.g. a forkserver, larger on a busy run.)
    order = [p["pid"] for p in data["processes"] if p["pid"] in (os.getpid(), child.pid)]
    assert order == [os.getpid(), child.pid], data["processes"]
    pids = [p["pid"] for p in by_pid["processes"]]
    assert pids == sorted(pids, reverse=True)
    buf.close()


def test_unknown_sort_column_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "--sort", "bogus"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_group_sums_per_program(capsys: pytest.CaptureFixture[str]) -> None:
    with forked(sleeper) as a, forked(sleeper) as b:
        assert a.recv() == b.recv() == "ready"
        data = _json(capsys, "--tree", "--group")
        assert main(["memory", "--tree", "--group"]) == 0
        table = capsys.readouterr().out
    groups = data["groups"]
    assert sum(g["count"] for g in groups) == len(data["processes"])
    assert sum(g["pss"] for g in groups) == data["totals"]["pss"]
    mine = next(g for g in groups if g["command"] == data["processes"][0]["command"])
    assert mine["count"] >= 3
    assert f"{mine['command']} ({mine['count']})" in table


def test_fast_tier_groups_and_matches(capsys: pytest.CaptureFixture[str]) -> None:
    with forked(sleeper) as child:
        assert child.recv() == "ready"
        data = _json(capsys, "--fast", "--tree", "--group", "--sort", "rss")
    assert sum(g["count"] for g in data["groups"]) == len(data["processes"]) >= 2
    assert child.pid in [p["pid"] for p in data["processes"]]


@pytest.mark.parametrize("argv", [["--watch", "0"], ["--watch", "-1"], ["--count", "0"]])
def test_bad_watch_values_are_usage_errors(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["memory", *argv]) == 2
    assert "positive" in capsys.readouterr().err
