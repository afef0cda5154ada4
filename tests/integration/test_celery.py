"""A real Celery worker (prefork pool, filesystem broker, file results) from examples/celery_app.py.

The worker's app builds ~100 MiB of small objects and calls ``forkmem.integrations.celery.install``.
The test asks the example to record, from a forkmem fork hook, the pid of every child it forks;
tasks return the pid of the child that ran them and its private memory after ``gc.collect()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import pytest
from _servers import free_port, serve

if TYPE_CHECKING:
    from collections.abc import Iterator

celery = pytest.importorskip("celery")

pytestmark = [pytest.mark.integration, pytest.mark.linux_only, pytest.mark.timeout(150)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# The example's broker layout, shared by its worker and the clients that send it tasks.
sys.path.append(str(EXAMPLES))
import celery_broker  # noqa: E402

CONCURRENCY = 2
MiB = 2**20


def _client(data: Path, broker: str = "filesystem://") -> Any:
    """A light client app on the worker's broker (it does not import the example's heap)."""
    return celery_broker.client(data, broker)


@contextlib.contextmanager
def _worker(
    data: Path, pid_dir: Path, log: Path, *, forkmem: bool = True, **extra_env: str
) -> Iterator[subprocess.Popen[bytes]]:
    celery_broker.prepare(data)
    env = dict(
        os.environ,
        FORKMEM_CELERY_DIR=str(data),
        FORKMEM_EXAMPLE_PID_DIR=str(pid_dir),
        FORKMEM_DISABLE="0" if forkmem else "1",
        **extra_env,
    )
    cmd = [
        sys.executable, "-m", "celery", "-A", "celery_app", "worker",
        "--pool=prefork", f"--concurrency={CONCURRENCY}", "--loglevel=INFO",
        "--without-heartbeat", "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    # A warm shutdown (SIGTERM) at the end: children leave normally and log.
    with serve(cmd, log, env, cwd=EXAMPLES, line="ready.", timeout=45) as proc:
        yield proc


def _pool_children(proc: subprocess.Popen[bytes]) -> set[int]:
    return {child.pid for child in psutil.Process(proc.pid).children()}


def test_hooks_fire_in_every_child_and_memory_stays_shared(tmp_path: Path) -> None:
    data, pid_dir, log = tmp_path / "broker", tmp_path / "pids", tmp_path / "worker.log"
    pid_dir.mkdir()
    client = _client(data)
    with _worker(data, pid_dir, log) as proc:
        children = _pool_children(proc)
        results = [client.send_task("celery_app.private_after_collect") for _ in range(6)]
        pids = [client.send_task("celery_app.whoami") for _ in range(4)]
        reports = [r.get(timeout=30, interval=0.1) for r in results]
        whoami = [r.get(timeout=30, interval=0.1) for r in pids]
    assert len(children) == CONCURRENCY
    hooked = {int(p.name): p.read_text().splitlines() for p in pid_dir.iterdir()}
    # forkmem's after-fork hooks ran in every pool child, exactly once each.
    assert set(hooked) == children, (hooked, children)
    assert all(lines == ["after_in_child"] for lines in hooked.values()), hooked
    assert {r["pid"] for r in reports} | set(whoami) <= children
    heap = reports[0]["heap_bytes"]
    assert heap > 80 * MiB
    for report in reports:
        assert report["uss"] < 0.10 * heap, f"{report['uss'] / MiB:.1f} MiB of {heap / MiB:.0f}"
    text = log.read_text()
    assert not (EXAMPLES / "control").exists()  # the broker's files stay in tmp_path
    assert "forkmem: froze" in text
    # Each child logged its peak private memory when the warm shutdown let it exit.
    logged = {
        int(line.split("celery worker pid ")[1].split()[0])
        for line in text.splitlines()
        if "celery worker pid" in line and "peak private memory" in line
    }
    assert logged == children, text


def test_without_forkmem_children_copy_the_heap(tmp_path: Path) -> None:
    data, pid_dir, log = tmp_path / "broker", tmp_path / "pids", tmp_path / "worker.log"
    pid_dir.mkdir()
    client = _client(data)
    with _worker(data, pid_dir, log, forkmem=False):
        report = client.send_task("celery_app.private_after_collect").get(timeout=30, interval=0.1)
    assert report["uss"] > 0.30 * report["heap_bytes"], report
    assert "forkmem: froze" not in log.read_text()


_PDEATHSIG_PROBE = """
import json, signal, sys
import billiard.util
from forkmem.integrations._billiard_warm import warm_pdeathsig_parser
from forkmem.testing import run_in_child

def child():
    before = set(sys.modules)
    billiard.util.set_pdeathsig(signal.SIGKILL)  # what Celery's child initializer calls
    return sorted(set(sys.modules) - before)

cold = run_in_child(child)
warmed = warm_pdeathsig_parser()
warm = run_in_child(child)
print(json.dumps([cold.value, cold.copied, warmed, warm.value, warm.copied]))
"""


def test_billiard_child_initializer_builds_no_c_parser_once_warmed() -> None:
    # With cffi installed (cryptography requires it: the Airflow env has it), billiard declares
    # prctl through cffi in every child, and the first declaration builds cffi's C parser.
    pytest.importorskip("cffi")
    # A fresh interpreter: this one may have built the parser already.
    out = subprocess.run(
        [sys.executable, "-c", _PDEATHSIG_PROBE], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    cold, cold_copied, warmed, warm, warm_copied = json.loads(out.stdout)
    assert "pycparser" in cold, cold  # the cost this guards against is real here
    assert warmed is True
    assert warm == [], warm  # nothing imported in the child once the parent parsed it
    # Measured 4.3 -> 1.4 MiB (3.12) and 7.6 -> 1.6 MiB (3.14) of private dirty growth.
    assert warm_copied < cold_copied / 2, (cold_copied / MiB, warm_copied / MiB)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        ((object(),), {}),
        ((celery.Celery("x"),), {"warmup": "yes"}),
        ((celery.Celery("x"),), {"immortalize": True}),
        ((celery.Celery("x"),), {"duty_cycle": 0}),
        ((celery.Celery("x"),), {"max_private_memory": "plenty"}),
        ((celery.Celery("x"),), {"max_private_memory": "1 GiB", "recycle_measure": "vms"}),
    ],
)
def test_install_rejects_bad_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    from forkmem.errors import InvalidArgument
    from forkmem.integrations.celery import install

    with pytest.raises(InvalidArgument):
        install(*args, **kwargs)


def test_metrics_from_the_environment_cover_the_pool(tmp_path: Path) -> None:
    pytest.importorskip("prometheus_client")
    import urllib.request

    port = free_port()
    data, pid_dir, log = tmp_path / "broker", tmp_path / "pids", tmp_path / "worker.log"
    os.environ["FORKMEM_METRICS"] = f"127.0.0.1:{port}"
    try:
        with _worker(data, pid_dir, log) as proc:
            deadline = time.monotonic() + 30
            while len(children := _pool_children(proc)) < CONCURRENCY + 1:  # + the exporter
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
            children = {p for p in children if "export" not in psutil.Process(p).cmdline()}
            deadline = time.monotonic() + 30
            text = ""
            while time.monotonic() < deadline:
                with contextlib.suppress(OSError):
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                        text = r.read().decode()
                    if all(f'pid="{pid}"' in text for pid in children):
                        break
                time.sleep(0.3)
    finally:
        del os.environ["FORKMEM_METRICS"]
    assert f'forkmem_tree_pss_bytes{{root="{proc.pid}"}}' in text, log.read_text()
    pool = [pid for pid in children if f'pid="{pid}",role="child"' in text]
    assert len(pool) >= CONCURRENCY, text
    assert "serving Celery metrics at" in log.read_text()
