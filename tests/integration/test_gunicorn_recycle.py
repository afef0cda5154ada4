"""Recycling gunicorn workers by private memory, under wrk load, against an RSS limit.

examples/recycle_app.py preloads ~150 MiB in the master; ``/`` is healthy (a bounded per-worker
cache warms up, then private memory levels off) and ``/leak`` leaks 1 MiB per request. The
limits come from examples/gunicorn_recycle.conf.py's environment.

- An RSS limit set as a user reading ``ps`` would (3% above a fresh worker's RSS) restarts
  healthy workers: their RSS is ~150 MiB of shared heap plus a few MiB of their own.
- ``max_private_memory`` (USS) leaves healthy workers alone and recycles leaking ones, one
  sample after they cross it; wrk sees no failed request in any of the runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _servers import free_port, get, serve, wrk

if TYPE_CHECKING:
    from collections.abc import Iterator

pytest.importorskip("gunicorn")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.linux_only,
    pytest.mark.timeout(240),
    pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk (Debian package wrk)"),
]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MiB = 2**20
LOAD_SECONDS = 8
_RECYCLED = re.compile(
    r"recycling gunicorn worker pid (\d+): (\w+) ([\d.]+) MiB > ([\d.]+) MiB for (\d+) samples?"
)


@contextlib.contextmanager
def _gunicorn(tmp_path: Path, name: str, **env: str) -> Iterator[tuple[str, Path]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / f"{name}.log"
    environment = dict(
        os.environ,
        XDG_RUNTIME_DIR=str(tmp_path),
        GUNICORN_BIND=f"127.0.0.1:{port}",
        GUNICORN_WORKERS="2",
        **env,
    )
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(EXAMPLES / "gunicorn_recycle.conf.py")]
    with serve(cmd, log, environment, cwd=EXAMPLES, url=base + "/memory", grace=30):
        yield base, log


def _wrk(url: str) -> dict[str, int]:
    requests, failed = wrk(url, LOAD_SECONDS)
    return {"requests": requests, "failed": failed}


def _recycles(log: Path) -> list[tuple[int, str, float, float, int]]:
    return [
        (int(m[1]), m[2], float(m[3]), float(m[4]), int(m[5]))
        for m in _RECYCLED.finditer(log.read_text())
    ]


def _fresh_worker_rss(tmp_path: Path) -> int:
    with _gunicorn(tmp_path, "measure", FORKMEM_MAX_PRIVATE_MEMORY="off") as (base, _):
        body = get(base + "/memory")
    return int(json.loads(body)["memory"]["rss"])


def test_rss_limit_restarts_healthy_workers_uss_limit_does_not(tmp_path: Path) -> None:
    fresh_rss = _fresh_worker_rss(tmp_path)
    assert fresh_rss > 150 * MiB  # the shared heap is in every worker's RSS
    rss_limit = int(fresh_rss * 1.03)
    with _gunicorn(
        tmp_path, "rss", FORKMEM_MAX_PRIVATE_MEMORY=str(rss_limit), FORKMEM_RECYCLE_MEASURE="rss"
    ) as (base, log):
        rss_load = _wrk(base + "/")
    rss_recycles = _recycles(log)
    with _gunicorn(tmp_path, "uss", FORKMEM_MAX_PRIVATE_MEMORY="64 MiB") as (base, log):
        uss_load = _wrk(base + "/")
        after = json.loads(get(base + "/memory"))
    uss_recycles = _recycles(log)
    # Healthy workers: the RSS limit restarts them again and again, the USS limit never.
    assert len(rss_recycles) >= 2, (fresh_rss, rss_limit, log.read_text()[-3000:])
    assert all(measure == "rss" for _, measure, *_ in rss_recycles)
    assert uss_recycles == [], uss_recycles
    assert after["memory"]["uss"] < 64 * MiB < after["memory"]["rss"]
    for load in (rss_load, uss_load):
        assert load["requests"] > 1000, load
        assert load["failed"] == 0, load


def test_uss_limit_recycles_only_leaking_workers_without_failed_requests(tmp_path: Path) -> None:
    with _gunicorn(tmp_path, "leak", FORKMEM_MAX_PRIVATE_MEMORY="64 MiB") as (base, log):
        load = _wrk(base + "/leak")
        time.sleep(1.0)  # the last recycled worker is reaped and counted
    text = log.read_text()
    recycles = _recycles(log)
    # ~40 requests/s per worker, 1 MiB each: a worker crosses 64 MiB every ~2 s.
    assert len(recycles) >= 3, text[-3000:]
    for pid, measure, value, limit, samples in recycles:
        assert measure == "uss"
        assert limit == 64.0
        assert value > limit
        assert samples == 2  # decided on the sample after the one that first crossed
        # The master reaped it and counted it (forkmem.recycle_stats() in the master).
        assert f"gunicorn worker pid {pid} was recycled for memory" in text
    assert f"{len(recycles)} recycled so far" in text
    assert load["requests"] > 100, load
    assert load["failed"] == 0, load
