"""Recycling gunicorn workers by private memory, under wrk load, against an RSS limit.

examples/recycle_app.py preloads ~150 MiB in the master; ``/`` is healthy (a bounded per-worker
cache warms up, then private memory levels off) and ``/leak`` leaks 1 MiB per request. The
limits come from examples/gunicorn_recycle.conf.py's environment.

- An RSS limit set as a user reading ``ps`` would (3% above a fresh worker's RSS) restarts
  healthy workers: their RSS is ~150 MiB of shared heap plus a few MiB of their own.
- ``max_private_memory`` (USS) leaves healthy workers alone and recycles leaking ones, one
  sample after they cross it; wrk sees no failed request in any of the runs. Sync and gthread
  workers sample from gunicorn's ``post_request``, without a thread.
- ``max_private_memory_hard`` ends a worker in the middle of a long request (its sampler runs
  in a thread).
"""

from __future__ import annotations

import contextlib
import http.client
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
_SAMPLER = "forkmem-sampler"


@contextlib.contextmanager
def _gunicorn(tmp_path: Path, name: str, **env: str) -> Iterator[tuple[str, Path]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / f"{name}.log"
    environment = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(tmp_path),
        "GUNICORN_BIND": f"127.0.0.1:{port}",
        "GUNICORN_WORKERS": "2",
        **env,
    }
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
        worker = json.loads(get(base + "/memory"))
        assert worker["threads"] == ["MainThread"]  # sampled from post_request, no thread
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


# One worker with a small heap: the tests below need no load generator and start fast.
_SMALL = {"GUNICORN_WORKERS": "1", "FORKMEM_EXAMPLE_HEAP_MIB": "16"}


def test_gthread_workers_recycle_at_the_limit_without_a_sampler_thread(tmp_path: Path) -> None:
    env = {**_SMALL, "GUNICORN_WORKER_CLASS": "gthread", "GUNICORN_THREADS": "2"}
    with _gunicorn(tmp_path, "gthread", FORKMEM_MAX_PRIVATE_MEMORY="40 MiB", **env) as (base, log):
        first = json.loads(get(base + "/memory"))
        assert _SAMPLER not in first["threads"], first["threads"]
        deadline = time.monotonic() + 60
        while not _recycles(log) and time.monotonic() < deadline:
            get(base + "/leak")
        deadline = time.monotonic() + 20
        while "recycled so far" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        after = json.loads(get(base + "/memory"))
    (pid, measure, value, limit, samples), *_ = _recycles(log)
    assert pid == first["pid"]
    assert (measure, limit, samples) == ("uss", 40.0, 2)
    assert value > limit
    assert f"gunicorn worker pid {pid} was recycled for memory" in log.read_text()
    assert after["pid"] != pid  # the arbiter forked a replacement
    assert _SAMPLER not in after["threads"], after["threads"]


def test_hard_limit_ends_a_worker_in_the_middle_of_a_request(tmp_path: Path) -> None:
    limits = {"FORKMEM_MAX_PRIVATE_MEMORY": "40 MiB", "FORKMEM_MAX_PRIVATE_MEMORY_HARD": "64 MiB"}
    with _gunicorn(tmp_path, "hard", **_SMALL, **limits) as (base, log):
        worker = json.loads(get(base + "/memory"))
        assert _SAMPLER in worker["threads"]  # the hard limit needs a thread
        # One request that would build 1 GiB over ~10 s: it never answers.
        with pytest.raises((OSError, http.client.HTTPException)):
            get(base + "/hog?mib=1024", timeout=60)
        deadline = time.monotonic() + 20
        while "recycled so far" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    text = log.read_text()
    # The soft limit asked first (the worker would leave after the request), then the hard one
    # ended it in the middle of the request.
    hard = [r for r in _recycles(log) if r[3] == 64.0]
    assert len(hard) == 1, text[-3000:]
    pid, measure, value, _, samples = hard[0]
    assert pid == worker["pid"]
    assert (measure, samples) == ("uss", 1)
    assert 64.0 < value < 512.0  # ended on its way up, far from the 1 GiB it asked for
    # gunicorn counts a request when it starts: the ones before, /memory the last, then /hog.
    assert f"(hard limit); served {worker['served'] + 1}," in text
    assert f"gunicorn worker pid {pid} was recycled for memory (uss" in text
    assert "hard limit); 1 recycled so far" in text  # the master counted the hard decision
