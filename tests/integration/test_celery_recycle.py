"""A real Celery prefork worker recycling leaking children by private memory: no task lost or twice.

examples/celery_app.py (filesystem broker, file results, ~100 MiB heap in the main process) with
``FORKMEM_MAX_PRIVATE_MEMORY=64 MiB``: its ``leak`` task leaks 1 MiB per run. Every run is
recorded by the child that ran it; the test checks each task ran exactly once and returned.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

celery = pytest.importorskip("celery")

# The worker and client of the plain Celery test (this directory is on sys.path).
from _servers import free_port  # noqa: E402
from test_celery import CONCURRENCY, _client, _worker  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.linux_only, pytest.mark.timeout(240)]

TASKS = 400
_RECYCLED = re.compile(
    r"recycling celery worker pid (\d+): uss ([\d.]+) MiB > ([\d.]+) MiB for (\d+) samples"
)


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server on 127.0.0.1 (Debian's), no persistence, gone after the test."""
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("needs redis-server (Debian package redis-server)")
    pytest.importorskip("redis")
    port = free_port()
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("redis-server did not start") from None
                time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


# The filesystem transport runs billiard's blocking pool; Redis runs Celery's event-loop pool
# (AsynPool), the one production workers use.
@pytest.mark.parametrize("broker", ["filesystem", "redis"])
def test_leaking_children_are_recycled_after_their_task(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    data, runs, log = tmp_path / "broker", tmp_path / "runs", tmp_path / "worker.log"
    pids_dir = tmp_path / "pids"
    runs.mkdir()
    pids_dir.mkdir()
    extra = {"FORKMEM_EXAMPLE_RUNS_DIR": str(runs), "FORKMEM_MAX_PRIVATE_MEMORY": "64 MiB"}
    if broker == "redis":
        url = request.getfixturevalue("redis_url")
        extra["FORKMEM_CELERY_BROKER"] = url
        client = _client(data, url)
    else:
        client = _client(data)
    with _worker(data, pids_dir, log, **extra):
        pending = [client.send_task("celery_app.leak", args=(i,)) for i in range(TASKS)]
        results = [r.get(timeout=120, interval=0.05) for r in pending]
        time.sleep(1.0)
    text = log.read_text()
    # Nothing lost: every task returned its own number.
    assert sorted(seq for seq, _ in results) == list(range(TASKS))
    # Nothing run twice: the children recorded one run of each number.
    ran = [int(line) for f in runs.iterdir() for line in f.read_text().split()]
    assert sorted(ran) == list(range(TASKS)), len(ran)
    recycles = [m.groups() for m in _RECYCLED.finditer(text)]
    # 400 MiB leaked through two children with a 64 MiB limit: several retirements.
    assert len(recycles) >= 3, text[-4000:]
    for _, value, limit, samples in recycles:
        # The log prints one decimal: a child at 64.04 MiB reads "64.0 MiB > 64.0 MiB".
        assert float(value) >= float(limit) == 64.0
        assert samples == "2"
    pids = {pid for _, pid in results}
    assert len(pids) > CONCURRENCY  # replacement children ran tasks
    # The main process counted them (forkmem.recycle_stats() there) as it replaced them.
    counted = re.findall(r"celery child pid (\d+) was recycled for memory", text)
    assert set(counted) <= {pid for pid, *_ in recycles}
    assert len(counted) >= len(recycles) - CONCURRENCY, text[-4000:]
    assert "WorkerLostError" not in text
