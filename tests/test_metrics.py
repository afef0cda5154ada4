"""forkmem.metrics: the Prometheus collector, the listen address, the server, the export CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import psutil
import pytest

import forkmem
from _memory_children import forked, sleeper, touched_map
from forkmem.cli import main

pytestmark = pytest.mark.linux_only
prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from forkmem import metrics  # noqa: E402

MIB = 1024 * 1024


def _scrape(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def test_collector_reports_every_process_of_the_tree() -> None:
    buf = touched_map(16 * MIB)
    with forked(sleeper) as child:
        assert child.recv() == "ready"
        registry = prometheus_client.CollectorRegistry(auto_describe=False)
        registry.register(metrics.TreeCollector(os.getpid()))
        before = forkmem.memory(child.pid).uss
        text = prometheus_client.generate_latest(registry).decode()
        after = forkmem.memory(child.pid).uss
        found = _scrape(text)
    assert found["forkmem_tree_up"] == [({}, 1.0)]
    uss = {int(labels["pid"]): (labels, v) for labels, v in found["forkmem_process_uss_bytes"]}
    assert uss[os.getpid()][0]["role"] == "root"
    labels, value = uss[child.pid]
    assert labels["role"] == "child"
    # Our own writes between the reads un-share pages, so the child's USS only grows.
    assert before is not None
    assert after is not None
    assert before - MIB <= value <= after + MIB
    for name in ("pss", "rss", "private_dirty", "shared_with_parent", "peak_rss"):
        assert any(int(lb["pid"]) == child.pid for lb, _ in found[f"forkmem_process_{name}_bytes"])
    shared = {int(lb["pid"]): v for lb, v in found["forkmem_process_shared_with_parent_bytes"]}
    assert os.getpid() not in shared  # the root has no parent in the tree
    assert shared[child.pid] >= 16 * MIB
    (tree_pss,) = found["forkmem_tree_pss_bytes"]
    assert tree_pss[0] == {"root": str(os.getpid())}
    assert found["forkmem_tree_processes"][0][1] >= 2
    buf.close()


def test_collector_of_a_gone_root_reports_down() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(metrics.TreeCollector(pid))
    found = _scrape(prometheus_client.generate_latest(registry).decode())
    assert found == {"forkmem_tree_up": [({}, 0.0)]}


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", ("127.0.0.1", 9464)),
        ("[::1]:0", ("::1", 0)),
        ("localhost:80", ("localhost", 80)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
    ],
)
def test_listen_addresses(address: str, expected: tuple[str, int]) -> None:
    assert metrics.parse_listen(address) == expected


@pytest.mark.parametrize("address", ["9464", "host:", "a.example:1", "1.2.3.4:70000", "::1"])
def test_bad_listen_addresses_are_typed_errors(address: str) -> None:
    with pytest.raises(forkmem.InvalidArgument):
        metrics.parse_listen(address)


def test_serve_metrics_answers_http_and_closes() -> None:
    server = metrics.serve_metrics(listen="127.0.0.1:0")
    try:
        assert server.port > 0
        with urllib.request.urlopen(server.url, timeout=10) as resp:
            body = resp.read().decode()
        assert 'forkmem_process_uss_bytes{command="' in body
        assert f'pid="{os.getpid()}"' in body
    finally:
        server.close()
    with pytest.raises(urllib.error.URLError):  # the port is released
        urllib.request.urlopen(server.url, timeout=2)


def test_a_port_in_use_is_a_typed_error() -> None:
    server = metrics.serve_metrics(listen="127.0.0.1:0")
    try:
        with pytest.raises(forkmem.InvalidArgument, match="cannot listen"):
            metrics.serve_metrics(listen=f"127.0.0.1:{server.port}")
    finally:
        server.close()


def test_without_prometheus_client_the_import_is_a_typed_error() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import forkmem\n"
        "try:\n"
        "    import forkmem.metrics\n"
        "except forkmem.MissingDependency as exc:\n"
        "    assert isinstance(exc, ImportError) and exc.extra == 'metrics', exc\n"
        "    print(exc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'forkmem[metrics]'" in proc.stdout


def test_export_of_a_missing_pid_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(2**22 + 11), "--listen", "127.0.0.1:0"]) == 2
    assert "no process" in capsys.readouterr().err


def test_export_needs_a_target(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export"]) == 2
    assert "required" in capsys.readouterr().err


def test_export_announces_itself_as_json() -> None:
    root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2)"])
    proc = subprocess.run(
        [sys.executable, "-m", "forkmem", "export", str(root.pid), "--listen", ":0", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    root.wait(10)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["root"] == root.pid
    assert data["serving"].startswith("http://127.0.0.1:")


def test_start_exporter_serves_this_tree_and_stops() -> None:
    from forkmem._exporter import start_exporter

    exporter = start_exporter("127.0.0.1:0")
    try:
        with urllib.request.urlopen(exporter.url, timeout=10) as resp:
            body = resp.read().decode()
        assert f'pid="{os.getpid()}",role="root"' in body
        assert f'pid="{exporter.pid}"' not in body  # it leaves itself out
    finally:
        exporter.close()
    assert exporter.proc.returncode is not None


def test_start_exporter_on_a_busy_port_is_a_typed_error() -> None:
    from forkmem._exporter import start_exporter

    server = metrics.serve_metrics(listen="127.0.0.1:0")
    try:
        with pytest.raises(forkmem.InvalidArgument, match="exited with status 2"):
            start_exporter(f"127.0.0.1:{server.port}")
    finally:
        server.close()


def test_integrations_validate_the_metrics_address() -> None:
    from forkmem.integrations import gunicorn

    with pytest.raises(forkmem.InvalidArgument):
        gunicorn.configure(metrics="nowhere")


def test_pushed_recycle_counts_are_served() -> None:
    import time

    from forkmem._exporter import start_exporter

    exporter = start_exporter("127.0.0.1:0", stats=True)
    try:
        exporter.push({"soft": 3, "hard": 1, "last_measure": "uss", "last_value": 5 * MIB})
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(exporter.url, timeout=10) as resp:
                found = _scrape(resp.read().decode())
            pushed = ({"kind": "soft"}, 3.0) in found.get("forkmem_worker_recycles_total", [])
            if pushed or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        counts = {lb["kind"]: v for lb, v in found["forkmem_worker_recycles_total"]}
        assert counts == {"soft": 3.0, "hard": 1.0}
        assert found["forkmem_worker_last_recycle_bytes"] == [({"measure": "uss"}, 5.0 * MIB)]
    finally:
        exporter.close()


def test_in_process_collector_reports_this_process_recycles() -> None:
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(metrics.TreeCollector())
    found = _scrape(prometheus_client.generate_latest(registry).decode())
    kinds = {lb["kind"] for lb, _ in found["forkmem_worker_recycles_total"]}
    assert kinds == {"soft", "hard"}


def test_airflow_manager_serves_metrics_when_asked() -> None:
    from forkmem.integrations.airflow.options import AirflowOptions
    from forkmem.integrations.airflow.session import Session

    with pytest.raises(forkmem.InvalidArgument):
        AirflowOptions(metrics="nowhere")
    options = AirflowOptions.from_env({"FORKMEM_AIRFLOW_METRICS": "127.0.0.1:0"}, freeze=False)
    assert options.metrics == "127.0.0.1:0"
    session = Session(
        AirflowOptions(
            metrics="127.0.0.1:0", freeze=False, measure_children=False, check_bytecode=False
        )
    )
    session.apply((3, 3, 2))
    try:
        found = [p for p in psutil.Process().children() if "export" in " ".join(p.cmdline())]
        assert len(found) == 1
    finally:
        session.close()
    found[0].wait(10)  # closing the session stops the exporter
