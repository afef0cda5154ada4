"""A real gunicorn serving forkmem's Prometheus metrics with ``configure(metrics=...)``."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import forkmem

pytest.importorskip("gunicorn")
pytest.importorskip("prometheus_client")
from _servers import free_port, get
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.integration, pytest.mark.linux_only, pytest.mark.timeout(120)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MIB = 1024 * 1024


def _gunicorn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """gunicorn -c ARGS..., in its own process group, logging to ``log``."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_gunicorn_master_serves_its_workers_metrics(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "from forkmem.integrations.gunicorn import *  # noqa: F403\n"
        "from forkmem.integrations.gunicorn import configure\n"
        f"configure(metrics='127.0.0.1:{metrics_port}')\n"
        f"chdir = {str(EXAMPLES)!r}\n"
        "wsgi_app = 'gunicorn_app:app'\n"
        "workers = 2\n"
        "preload_app = True\n"
    )
    log = tmp_path / "gunicorn.log"
    proc = _gunicorn(
        [str(conf), "--bind", f"127.0.0.1:{port}"],
        dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path)),
        log,
    )
    try:
        deadline = time.monotonic() + 60
        text = ""
        workers: set[int] = set()
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                text = get(f"http://127.0.0.1:{metrics_port}/metrics").decode()
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
                continue
            workers = {
                int(s.labels["pid"])
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "forkmem_process_uss_bytes" and s.labels["role"] == "child"
            }
            if len(workers) >= 2:
                break
            time.sleep(0.3)
        assert len(workers) >= 2, f"{text}\n{log.read_text()}"
        assert f'forkmem_tree_pss_bytes{{root="{proc.pid}"}}' in text
        assert "serving gunicorn metrics at" in log.read_text()
        for pid in workers:
            assert forkmem.rss_breakdown(pid).rss > 0  # real, live workers
        uss = {
            int(s.labels["pid"]): s.value
            for f in text_string_to_metric_families(
                get(f"http://127.0.0.1:{metrics_port}/metrics").decode()
            )
            for s in f.samples
            if s.name == "forkmem_process_uss_bytes"
        }
        for pid in workers:
            truth = forkmem.memory(pid).uss
            assert truth is not None
            assert abs(uss[pid] - truth) <= 2 * MIB
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
    # The exporter follows its master out.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            get(f"http://127.0.0.1:{metrics_port}/metrics")
        except (urllib.error.URLError, ConnectionError):
            break
        time.sleep(0.3)
    else:
        pytest.fail("the exporter outlived gunicorn")


def _recycles(text: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "forkmem_worker_recycles_total"
    )


def test_recycles_counted_in_the_master_reach_the_exporter(tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    env = dict(
        os.environ,
        XDG_RUNTIME_DIR=str(tmp_path),
        FORKMEM_METRICS=f"127.0.0.1:{metrics_port}",
        FORKMEM_EXAMPLE_HEAP_MIB="20",
        FORKMEM_MAX_PRIVATE_MEMORY="24 MiB",
        GUNICORN_BIND=f"127.0.0.1:{port}",
    )
    log = tmp_path / "gunicorn.log"
    proc = _gunicorn([str(EXAMPLES / "gunicorn_recycle.conf.py")], env, log)
    try:
        deadline = time.monotonic() + 60
        text = ""
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(urllib.error.URLError, ConnectionError):
                text = get(f"http://127.0.0.1:{metrics_port}/metrics").decode()
                get(f"http://127.0.0.1:{port}/")
                break
            time.sleep(0.3)
        assert 'forkmem_worker_recycles_total{kind="soft"} 0.0' in text, log.read_text()
        recycled = 0.0
        while time.monotonic() < deadline and not recycled:
            for _ in range(10):
                with contextlib.suppress(urllib.error.URLError, ConnectionError):
                    get(f"http://127.0.0.1:{port}/leak")
            recycled = _recycles(get(f"http://127.0.0.1:{metrics_port}/metrics").decode())
        assert recycled >= 1, log.read_text()
        assert "was recycled for memory" in log.read_text()
        text = get(f"http://127.0.0.1:{metrics_port}/metrics").decode()
        assert 'forkmem_worker_last_recycle_bytes{measure="uss"}' in text
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
