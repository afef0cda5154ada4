"""forkmem's Airflow dag-processor: a real Airflow on sqlite, and the parts that need no Airflow.

The integration tests (``tox -e integration``) migrate a sqlite database in a temporary
AIRFLOW_HOME, write one-task DAG files, start ``python -m forkmem.integrations.airflow
dag-processor`` with two parsing processes, and check that the DAGs reached ``serialized_dag``
and that every parse child reported its memory. The other tests run everywhere: they fork real
children through the same measuring machinery, without Airflow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sqlite3
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import pytest
from _servers import stop

from forkmem import InvalidArgument, UnsupportedRuntime
from forkmem._immortal import unsupported_reason
from forkmem.integrations import airflow as fa
from forkmem.integrations.airflow import cli as fa_cli
from forkmem.integrations.airflow import session as fa_session

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

MiB = 1024 * 1024
DAG_FILES = 24
EXPECTED_DAGS = frozenset(f"forkmem_dag_{n:02d}" for n in range(1, DAG_FILES + 1))
# Generous: a run needs ~15 s here; the bound only stops a hung run.
RUN_DEADLINE = 120.0

# find_spec, not import: importing Airflow takes seconds, and only the integration tests need it.
HAVE_AIRFLOW = importlib.util.find_spec("airflow") is not None


# ---------------------------------------------------------------------------------------------
# Options (no Airflow needed)


def test_options_defaults_and_modes() -> None:
    assert fa.AirflowOptions().mode == "freeze"
    assert fa.AirflowOptions(freeze=False).mode == "off"
    assert fa.AirflowOptions(warmup=True).mode == "warmup"
    assert fa.AirflowOptions(warmup=True, immortalize=True).mode == "immortalize"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"immortalize": True},
        {"freeze": False, "warmup": True},
        {"freeze": "yes"},
        {"stats_file": ""},
        {"preimport": "json"},
        {"preimport": ("json", "")},
    ],
)
def test_options_reject_bad_values(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        fa.AirflowOptions(**kwargs)


def test_options_from_env() -> None:
    env = {
        "FORKMEM_AIRFLOW_IMMORTALIZE": "yes",
        "FORKMEM_AIRFLOW_FORK_SERVER": "on",
        "FORKMEM_AIRFLOW_REHEARSE": "1",
        "FORKMEM_AIRFLOW_CHECK_BYTECODE": "0",
        "FORKMEM_AIRFLOW_STATS_FILE": "/tmp/x.jsonl",
        "FORKMEM_AIRFLOW_PREIMPORT": "json, decimal",
    }
    opts = fa.AirflowOptions.from_env(env)
    assert opts.mode == "immortalize"  # immortalize alone implies warmup
    assert opts.check_bytecode is False
    assert opts.stats_file == "/tmp/x.jsonl"
    assert opts.preimport == ("json", "decimal")
    assert opts.fork_server is True
    assert opts.rehearse is True
    assert fa.AirflowOptions().fork_server is False
    assert fa.AirflowOptions().rehearse is False
    # Explicit values win; None means "not given".
    assert fa.AirflowOptions.from_env(env, immortalize=False, warmup=None).mode == "warmup"


def test_options_from_env_names_the_bad_variable() -> None:
    with pytest.raises(InvalidArgument, match="FORKMEM_AIRFLOW_WARMUP"):
        fa.AirflowOptions.from_env({"FORKMEM_AIRFLOW_WARMUP": "maybe"})
    with pytest.raises(InvalidArgument, match="nonsense"):
        fa.AirflowOptions.from_env({}, nonsense=True)


def test_immortalize_refused_before_airflow_starts_where_unsupported() -> None:
    opts = fa.AirflowOptions(warmup=True, immortalize=True)
    if unsupported_reason() is None:  # CPython 3.12+ (the runtime probe passes)
        fa_cli.check_immortalize(opts)
    else:
        with pytest.raises(UnsupportedRuntime, match="--forkmem-immortalize"):
            fa_cli.check_immortalize(opts)


NO_FLAGS: dict[str, Any] = dict.fromkeys(
    ("freeze", "warmup", "immortalize", "measure_children", "rehearse", "fork_server")
)


def test_no_flags_mean_the_best_mode_this_runtime_supports() -> None:
    from forkmem._immortal import unsupported_reason

    opts, skipped = fa_cli.best_options(NO_FLAGS, environ={})
    assert opts.warmup
    assert opts.rehearse
    assert opts.fork_server is sys.platform.startswith("linux")
    if unsupported_reason() is None:
        assert opts.mode == "immortalize"
    else:
        assert opts.mode == "warmup"
        assert skipped[0].startswith("immortalize: ")


def test_the_best_mode_names_what_it_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fa_cli, "unsupported_reason", lambda: "not on this interpreter")
    opts, skipped = fa_cli.best_options(NO_FLAGS, environ={})
    assert opts.mode == "warmup"
    assert opts.rehearse
    assert skipped[0] == "immortalize: not on this interpreter"
    assert fa_cli.describe(opts).startswith("warmup + rehearse")


@pytest.mark.parametrize(
    ("flags", "environ", "plain", "expected"),
    [
        ({}, {}, True, ("freeze", False, False)),
        ({"rehearse": True}, {}, True, ("freeze", True, False)),
        ({"fork_server": False}, {}, False, ("immortalize", True, False)),
        ({"warmup": False}, {}, False, ("freeze", True, True)),
        ({}, {"FORKMEM_AIRFLOW_WARMUP": "0"}, False, ("freeze", True, True)),
        ({}, {"FORKMEM_AIRFLOW_REHEARSE": "off"}, False, ("immortalize", False, True)),
        ({"immortalize": False}, {}, False, ("warmup", True, True)),
        ({"freeze": False}, {}, False, ("off", False, False)),
    ],
)
def test_flags_and_variables_win_over_the_best_mode(
    flags: dict[str, Any], environ: dict[str, str], plain: bool, expected: tuple[str, bool, bool]
) -> None:
    if fa_cli.unsupported_reason() is not None or not sys.platform.startswith("linux"):
        pytest.skip("the expected modes assume immortalization (CPython 3.12+) on Linux")
    opts, skipped = fa_cli.best_options({**NO_FLAGS, **flags}, plain=plain, environ=environ)
    assert (opts.mode, opts.rehearse, opts.fork_server) == expected
    assert skipped == ()


def test_code_packing_is_on_by_default_and_each_switch_turns_it_off() -> None:
    assert fa.AirflowOptions().pack_code
    assert not fa.AirflowOptions.from_env({"FORKMEM_AIRFLOW_PACK_CODE": "0"}).pack_code
    opts, _ = fa_cli.best_options({**NO_FLAGS, "pack_code": False}, environ={})
    assert not opts.pack_code


def test_the_no_pack_code_flag_parses() -> None:
    pytest.importorskip("airflow")  # the parser takes Airflow's own dag-processor arguments
    args = fa_cli._build_parser().parse_args(["dag-processor", "--forkmem-no-pack-code"])
    assert args.forkmem_pack_code is False


def test_stock_arguments_drop_forkmem_options() -> None:
    given = [
        "dag-processor", "--forkmem-plain", "-n", "3", "--forkmem-stats-file", "s.jsonl",
        "--forkmem-preimport=a,b", "--forkmem-no-rehearse", "--bundle-name", "dags",
    ]  # fmt: skip
    assert fa_cli.stock_arguments(given) == ["dag-processor", "-n", "3", "--bundle-name", "dags"]


def test_preimport_imports_before_the_freeze(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    opts = fa.AirflowOptions(
        freeze=False,
        check_bytecode=False,
        measure_children=False,
        preimport=("colorsys", "forkmem_no_such_module"),
    )
    sess = fa_session.Session(opts)
    sess.apply((3, 3, 2))  # the missing module is logged, not raised
    sess.close()
    assert "colorsys" in sys.modules


@pytest.mark.skipif(HAVE_AIRFLOW, reason="Airflow is installed here")
def test_without_airflow_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnsupportedRuntime, match=r"forkmem\[airflow\]"):
        fa.manager_class()
    assert fa.main(["dag-processor"]) == 2
    assert "apache-airflow-core" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Parse-child measurement with real forks (no Airflow needed)


def _fork_child(body: Any) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            body()
        finally:
            os._exit(70)  # body must leave through os._exit itself
    return pid


@pytest.fixture
def session(tmp_path: Path) -> Iterator[fa_session.Session]:
    stats = tmp_path / "stats.jsonl"
    sess = fa_session.Session(
        fa.AirflowOptions(freeze=False, check_bytecode=False, stats_file=str(stats))
    )
    sess.apply((3, 3, 2))
    try:
        yield sess
    finally:
        sess.close()


@pytest.mark.linux_only
def test_children_measure_themselves_at_exit(session: fa_session.Session) -> None:
    def allocate_and_exit() -> None:
        block = bytearray(24 * MiB)  # written: 24 MiB private in the child
        del block
        held = [bytearray(b"x" * 4096) for _ in range(3000)]  # ~12 MiB that stays
        os._exit(3 if held else 4)

    pid = _fork_child(allocate_and_exit)
    session.note_children({"dags/one.py": _Proc(pid)})
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 3
    found = session.drain(running=[])
    assert [c.pid for c in found] == [pid]
    child = found[0]
    assert child.file == "dags/one.py"
    assert child.exit_code == 3
    assert child.private is not None
    assert child.private >= 10 * MiB
    assert child.rss >= child.private
    # The 24 MiB block was unmapped before the exit: only the peak remembers it.
    assert child.peak_rss is not None
    assert child.peak_rss - child.rss >= 8 * MiB
    assert session.files == {}  # pids no longer running are forgotten


@pytest.mark.linux_only
def test_grandchildren_and_unknown_children(session: fa_session.Session) -> None:
    def fork_grandchild() -> None:
        grandchild = os.fork()
        if grandchild == 0:
            os._exit(0)  # a process DAG code forked: not a parse child, reports nothing
        os.waitpid(grandchild, 0)
        os._exit(0)

    pid = _fork_child(fork_grandchild)
    os.waitpid(pid, 0)
    found = session.drain(running=[])
    assert [c.pid for c in found] == [pid]
    assert found[0].file is None  # the manager never learned what it parsed


@pytest.mark.linux_only
def test_stats_file_and_summary(session: fa_session.Session, tmp_path: Path) -> None:
    pids = [_fork_child(lambda: os._exit(0)) for _ in range(3)]
    for pid in pids:
        os.waitpid(pid, 0)
    assert len(session.drain(running=[])) == 3
    session.close()
    records = [json.loads(line) for line in (tmp_path / "stats.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["setup", *["parse_child"] * 3, "summary"]
    assert records[0]["mode"] == "off"
    assert records[-1]["children"] == 3
    assert records[-1]["private_max"] >= records[-1]["private_median"] > 0
    # The session closed its pipe and removed its hook: a new fork reports nothing.
    pid = _fork_child(lambda: os._exit(0))
    os.waitpid(pid, 0)
    assert session.drain(running=[]) == []


def test_no_stats_file_unless_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    sess = fa_session.Session(fa.AirflowOptions(freeze=False, check_bytecode=False))
    sess.apply((3, 3, 2))
    sess.close()
    assert list(tmp_path.iterdir()) == []


class _Proc:
    def __init__(self, pid: int) -> None:
        self.pid = pid


def _module_level_target() -> None:
    """A target the fork server can name."""


def test_fork_server_names_only_module_level_targets() -> None:
    from forkmem.integrations.airflow.fork_server import _target_name

    def nested() -> None:
        pass

    assert _target_name(_module_level_target) == f"{__name__}:_module_level_target"
    assert _target_name(nested) is None
    assert _target_name(lambda: None) is None
    assert _target_name(None) is None


def test_fork_server_reads_the_child_sockets_from_the_forking_frame() -> None:
    import socket

    from forkmem.integrations.airflow.fork_server import AirflowForkServer

    server = AirflowForkServer(freeze=False, warmup=False, immortalize=False, arm_child=None)

    def start(target: Any, use_exec: bool = False) -> Any:
        # The local names WatchedSubprocess.start() has at its os.fork().
        child_stdout, read_stdout = socket.socketpair()
        child_stderr, read_stderr = socket.socketpair()
        child_requests, read_requests = socket.socketpair()
        child_logs, read_logs = socket.socketpair()
        new_process_group = True
        everything = (child_stdout, read_stdout, child_stderr, read_stderr, child_requests)
        everything += (read_requests, child_logs, read_logs)
        try:
            found = server._request(sys._getframe(), "/dags/a.py")
            wanted = [s.fileno() for s in (child_requests, child_stdout, child_stderr, child_logs)]
            return found, wanted, new_process_group
        finally:
            for sock in everything:
                sock.close()

    server._start_code = start.__code__
    found, wanted, _ = start(_module_level_target)
    assert found == (
        wanted,
        {
            "target": f"{__name__}:_module_level_target",
            "path": "/dags/a.py",
            "new_process_group": True,
        },
    )
    # Anything the server could not reproduce is forked by Airflow itself.
    assert start(lambda: None)[0] is None
    assert start(_module_level_target, use_exec=True)[0] is None
    server._start_code = None  # a frame of any other function
    assert start(_module_level_target)[0] is None


@pytest.mark.skipif(HAVE_AIRFLOW, reason="the fallback without Airflow")
def test_fork_server_without_airflow_leaves_forking_to_airflow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sess = fa_session.Session(
        fa.AirflowOptions(
            freeze=False, check_bytecode=False, measure_children=False, fork_server=True
        )
    )
    sess.apply((3, 3, 2))
    try:
        assert sess.server is None  # started with the first parse child, not before
        with (
            caplog.at_level("WARNING", logger="forkmem.airflow"),
            sess.routing("/dags/x.py"),
        ):
            assert os.fork is _REAL_FORK  # nothing is routed without a server
        assert "no fork server" in caplog.text
        assert sess.server is None
        assert sess.server_wanted is False  # not tried again for every child
    finally:
        sess.close()


_REAL_FORK = os.fork


# ---------------------------------------------------------------------------------------------
# A real dag-processor (tox -e integration)

DAG_TEMPLATE = """\
from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG(dag_id="forkmem_dag_{n:02d}", schedule=None, start_date=datetime(2024, 1, 1)):
    EmptyOperator(task_id="only_task")
"""


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    pytest.importorskip("airflow")
    home = tmp_path_factory.mktemp("airflow_home")
    dags = home / "dags"
    dags.mkdir()
    for n in range(1, DAG_FILES + 1):
        (dags / f"dag_{n:02d}.py").write_text(DAG_TEMPLATE.format(n=n))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "FORKMEM_AIRFLOW_"))}
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home / 'airflow.db'}",
        AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES="2",
    )
    subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
    )
    return env


def _serialized_dag_ids(home: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(f"file:{home}/airflow.db?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout = 5000")
        return {row[0] for row in db.execute("SELECT dag_id FROM serialized_dag")}


def _watch_tree(root: int, seen: dict[int, int]) -> None:
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(root).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                seen[child.pid] = child.ppid()  # the latest: a parent can change


def _records(stats: Path, event: str) -> list[dict[str, Any]]:
    if not stats.exists():
        return []
    lines = stats.read_text().splitlines()
    # The last line may be half-written while the manager runs.
    out = []
    for line in lines:
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == event:
                out.append(record)
    return out


def _run_dag_processor(
    env: dict[str, str], tmp_path: Path, *extra: str, watch: dict[int, int] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], str]:
    """Run the dag-processor until every DAG is parsed; with ``watch``, record the parent of
    every process seen in its tree (pid -> latest ppid), sampled every 20 ms."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    stats = tmp_path / "stats.jsonl"
    log = tmp_path / "dag_processor.log"
    cmd = [
        sys.executable,
        "-m",
        "forkmem.integrations.airflow",
        "dag-processor",
        "--forkmem-stats-file",
        str(stats),
        *extra,
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + RUN_DEADLINE
            while time.monotonic() < deadline and proc.poll() is None:
                # Stop once every file was parsed and persisted (a child reports as it exits,
                # a moment before the manager writes its DAG to the database).
                if (
                    len(_records(stats, "parse_child")) >= DAG_FILES
                    and (_serialized_dag_ids(env["AIRFLOW_HOME"])) >= EXPECTED_DAGS
                ):
                    break
                if watch is None:
                    time.sleep(1.0)
                    continue
                until = time.monotonic() + 1.0
                while time.monotonic() < until:
                    _watch_tree(proc.pid, watch)
                    time.sleep(0.02)
        finally:
            # the group: Airflow's graceful exit can be swallowed in a weakref callback
            stop(proc, group=True)
    return _records(stats, "setup"), _records(stats, "parse_child"), log.read_text()


@pytest.mark.integration
@pytest.mark.linux_only
@pytest.mark.timeout(400)
def test_dag_processor_parses_and_measures(airflow_home: dict[str, str], tmp_path: Path) -> None:
    setup, children, log = _run_dag_processor(airflow_home, tmp_path / "freeze", "--forkmem-plain")
    assert len(setup) == 1, log[-3000:]
    assert setup[0]["mode"] == "freeze"
    assert setup[0]["frozen"] > 10_000  # Airflow's manager holds far more objects than that
    assert _serialized_dag_ids(airflow_home["AIRFLOW_HOME"]) >= EXPECTED_DAGS, log[-3000:]
    # Every DAG file was parsed by a child that measured itself on the way out.
    assert {c["file"] for c in children} >= {f"dag_{n:02d}.py" for n in range(1, DAG_FILES + 1)}
    for child in children:
        assert child["exit_code"] == 0
        assert 0 < child["private"] <= child["rss"] <= child["peak_rss"]
        assert child["pss"] < child["rss"]  # it shares the manager's pages
    assert "forkmem: parse child pid=" in log


_IMMORTALIZING_MARKS = (
    pytest.mark.integration,
    pytest.mark.linux_only,
    pytest.mark.timeout(400),
    pytest.mark.skipif(
        unsupported_reason() is not None, reason=f"immortalization: {unsupported_reason()}"
    ),
)


def _immortalizing_airflow_test(fn: Callable[..., None]) -> Callable[..., None]:
    """A real dag-processor run with --forkmem-immortalize (where the runtime probe passes)."""
    for mark in _IMMORTALIZING_MARKS:
        fn = mark(fn)
    return fn


def _median_private(rows: list[dict[str, Any]]) -> float:
    values = sorted(r["private"] for r in rows)
    return float(values[len(values) // 2])


@pytest.fixture(scope="module")
def stock_children(
    airflow_home: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> list[dict[str, Any]]:
    """The parse children of a stock run (Airflow's own freeze, children measured), once."""
    _, children, log = _run_dag_processor(
        airflow_home, tmp_path_factory.mktemp("off"), "--forkmem-no-freeze"
    )
    assert len(children) >= DAG_FILES, log[-3000:]
    return children


@_immortalizing_airflow_test
def test_immortalized_manager_children_copy_less(
    airflow_home: dict[str, str], stock_children: list[dict[str, Any]], tmp_path: Path
) -> None:
    stock = stock_children
    setup, warm, log = _run_dag_processor(airflow_home, tmp_path / "imm", "--forkmem-immortalize")
    assert setup, log[-3000:]
    assert setup[0]["mode"] == "immortalize"
    assert setup[0]["immortalized"] > 0
    assert len(stock) >= DAG_FILES
    assert len(warm) >= DAG_FILES
    # Measured here: ~28 MiB stock, ~13 MiB immortalized; the bound leaves wide room.
    assert _median_private(warm) < 0.75 * _median_private(stock), (
        _median_private(warm) / MiB,
        _median_private(stock) / MiB,
    )


@_immortalizing_airflow_test
def test_no_flags_fork_server_children_are_the_managers_and_copy_least(
    airflow_home: dict[str, str], stock_children: list[dict[str, Any]], tmp_path: Path
) -> None:
    stock = stock_children
    watched: dict[int, int] = {}
    # No flags: the best mode this runtime supports is immortalize + rehearse + fork server.
    setup, served, log = _run_dag_processor(airflow_home, tmp_path / "server", watch=watched)
    assert setup, log[-3000:]
    assert setup[0]["mode"] == "immortalize", log[-3000:]
    assert "skipped" not in log
    assert setup[0]["fork_server"] is True, log[-3000:]
    assert setup[0]["rehearsal_seconds"] is not None, log[-3000:]
    assert "forkmem: parse rehearsal packed " in log, log[-3000:]
    events = _records(tmp_path / "server" / "stats.jsonl", "fork_server")
    servers = {e["pid"] for e in events if e["action"] == "start"}
    assert servers, log[-3000:]
    # Each parsing round has its own server, stopped when the round is over.
    assert sum(e.get("spawned", 0) for e in events if e["action"] == "stop") >= 1
    assert "Traceback" not in log, log[-3000:]
    # Every DAG reached the database and every parse child exited cleanly...
    assert _serialized_dag_ids(airflow_home["AIRFLOW_HOME"]) >= EXPECTED_DAGS, log[-3000:]
    assert len(served) >= DAG_FILES
    assert all(c["exit_code"] == 0 for c in served)
    # ... as a child of the manager itself (the manager waits for it), not of the server.
    manager = setup[0]["pid"]
    parse_pids = {c["pid"] for c in served}
    seen = {pid: ppid for pid, ppid in watched.items() if pid in parse_pids}
    assert seen, "no parse child was caught alive"
    # A child caught in its first moments may still show the short-lived intermediate process
    # as its parent; never the server, and the manager for most of them.
    assert not servers & set(seen.values()), seen
    assert sum(ppid == manager for ppid in seen.values()) >= max(1, len(seen) // 2), seen
    assert any(watched.get(pid) == manager for pid in servers), (servers, manager)
    # Measured here: ~28 MiB stock, ~6.6 MiB; the bound leaves wide room.
    assert _median_private(served) < 0.5 * _median_private(stock), (
        _median_private(served) / MiB,
        _median_private(stock) / MiB,
    )


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_forkmem_disable_runs_stock_airflow(airflow_home: dict[str, str]) -> None:
    env = dict(airflow_home, FORKMEM_DISABLE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "forkmem.integrations.airflow", "dag-processor", "--forkmem-plain",
         "--help"],
        env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "the airflow integration does nothing" in proc.stderr
    # Airflow's own parser answered: it knows nothing of forkmem's options.
    assert "--num-runs" in proc.stdout
    assert "--forkmem" not in proc.stdout
