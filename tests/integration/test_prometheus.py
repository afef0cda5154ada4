"""A real Prometheus server scrapes ``forkmem export`` and its query API agrees with /proc.

Needs Debian's ``prometheus`` package (``.ci/run`` installs it) and the ``metrics`` extra.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING, Any

import pytest
from _servers import free_port, get

import forkmem
from _memory_children import forked, touched_map

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from _memory_children import Pipe

pytestmark = [pytest.mark.integration, pytest.mark.linux_only]
pytest.importorskip("prometheus_client")

PROMETHEUS = shutil.which("prometheus")
SCRAPE = 1.0  # seconds: Prometheus's scrape interval in this test
MIB = 1024 * 1024


def _wait_for(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            get(url, timeout=5.0)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Any]:
    """Start Prometheus scraping a target; yields a query function (instant vector -> {pid: v})."""
    if PROMETHEUS is None:
        pytest.fail("prometheus is not installed (apt-get install prometheus)")
    procs: list[subprocess.Popen[bytes]] = []

    def start(target_port: int) -> Any:
        port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(
            f"global:\n  scrape_interval: {SCRAPE:g}s\n  scrape_timeout: {SCRAPE:g}s\n"
            "scrape_configs:\n  - job_name: forkmem\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{target_port}']\n"
        )
        log = (tmp_path / "prometheus.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    str(PROMETHEUS),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={tmp_path / 'data'}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=warn",
                ],
                stdout=log,
                stderr=log,
            )
        )
        base = f"http://127.0.0.1:{port}"
        _wait_for(f"{base}/-/ready")

        def query(expr: str) -> dict[int, float]:
            url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
            data = json.loads(get(url, timeout=5.0))
            assert data["status"] == "success", data
            return {
                int(r["metric"].get("pid", r["metric"].get("root"))): float(r["value"][1])
                for r in data["data"]["result"]
            }

        return query

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(30)


def _holder(pipe: Pipe) -> None:
    """Child body: hold 8 MiB of its own, then 24 MiB more when told to."""
    maps = [touched_map(8 * MIB)]
    pipe.send("ready")
    pipe.recv(timeout=120)
    maps.append(touched_map(24 * MIB))
    pipe.send("grown")
    pipe.recv(timeout=120)


def _until(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def test_prometheus_scrapes_per_process_uss_from_proc(prometheus: Any) -> None:
    shared = touched_map(32 * MIB)  # inherited by the children: PSS and the shared column move
    port = free_port()
    with forked(_holder) as a, forked(_holder) as b:
        assert a.recv() == b.recv() == "ready"
        exporter = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "forkmem",
                "export",
                str(os.getpid()),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert exporter.stdout is not None
            assert "serving http://127.0.0.1:" in exporter.stdout.readline()
            query = prometheus(port)
            pids = {os.getpid(), a.pid, b.pid}

            def uss() -> dict[int, float]:
                found = query("forkmem_process_uss_bytes")
                return found if pids <= set(found) else {}

            seen = _until(uss, 30)
            assert pids <= set(seen), seen
            assert exporter.pid not in seen, "the exporter leaves itself out"
            for pid in (a.pid, b.pid):
                truth = forkmem.memory(pid).uss
                assert truth is not None
                assert abs(seen[pid] - truth) <= 1 * MIB, (pid, seen[pid], truth)

            # Freshness: after the child grows, the next scrapes show it (values read at scrape
            # time, not cached), and Prometheus's value matches /proc's within one interval.
            a.send("grow")
            assert a.recv() == "grown"
            truth = forkmem.memory(a.pid).uss
            assert truth is not None
            t0 = time.monotonic()
            grown = _until(
                lambda: abs(query("forkmem_process_uss_bytes").get(a.pid, 0) - truth) <= 1 * MIB,
                2 * SCRAPE + 5,
            )
            assert grown, (query("forkmem_process_uss_bytes"), truth)
            assert time.monotonic() - t0 <= 2 * SCRAPE + 5

            roles = query('forkmem_process_rss_bytes{role="child"}')
            assert {a.pid, b.pid} <= set(roles)
            assert set(query('forkmem_process_rss_bytes{role="root"}')) == {os.getpid()}
            shared_col = query("forkmem_process_shared_with_parent_bytes")
            assert shared_col[b.pid] >= 32 * MIB
            tree = _until(lambda: query("forkmem_tree_shared_savings_bytes > 0"), 10)
            assert set(tree) == {os.getpid()}, "tree totals are exported, labelled by root"
            assert query("forkmem_tree_processes")[os.getpid()] >= 3
        finally:
            exporter.terminate()
            exporter.wait(10)
    shared.close()


def test_exporter_exits_with_its_root(tmp_path: Path) -> None:
    root = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    exporter = subprocess.run(
        [sys.executable, "-m", "forkmem", "export", str(root.pid), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    root.wait(10)
    assert exporter.returncode == 0, exporter.stderr
    assert "serving" in exporter.stdout
