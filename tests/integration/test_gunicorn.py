"""A real gunicorn (preload, 4 sync workers) from examples/gunicorn.conf.py; with, without forkmem.

The example app builds ~100 MiB of small objects in the master; its ``/memory`` route makes the
worker run ``gc.collect()`` and return ``forkmem.memory()``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from _servers import free_port, get, serve

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator

pytest.importorskip("gunicorn")

pytestmark = [pytest.mark.integration, pytest.mark.linux_only, pytest.mark.timeout(120)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
WORKERS = 4


@contextlib.contextmanager
def _gunicorn(args: list[str], log: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "gunicorn", *args, "--bind", f"127.0.0.1:{port}"]
    # gunicorn 23+ opens a control socket under $XDG_RUNTIME_DIR: keep it in tmp.
    env = dict(os.environ, XDG_RUNTIME_DIR=str(log.parent))
    with serve(command, log, env, cwd=EXAMPLES, url=base + "/", timeout=45) as proc:
        yield base, proc


def _sample_workers(base: str, want: int = WORKERS, rounds: int = 10) -> dict[int, dict[str, Any]]:
    """Ask /memory until ``want`` distinct workers answered (or ``rounds`` batches).

    Requests go out ``want`` at a time and each holds its worker for a moment: a busy sync worker
    cannot accept, so the batch spreads over the workers. One request at a time would not, since
    the kernel may hand every connection to the same idle worker.
    """
    seen: dict[int, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=want) as pool:
        for _ in range(rounds):
            bodies = pool.map(lambda _: get(base + "/memory?hold=0.5"), range(want))
            for body in bodies:
                payload = json.loads(body)
                seen[payload["pid"]] = payload
            if len(seen) >= want:
                break
    return seen


def test_forkmem_hooks_keep_workers_shared(tmp_path: Path) -> None:
    log = tmp_path / "gunicorn.log"
    with _gunicorn(["-c", str(EXAMPLES / "gunicorn.conf.py")], log) as (base, proc):
        workers = _sample_workers(base)
        master = proc.pid
    assert len(workers) >= 2, workers.keys()
    heap = next(iter(workers.values()))["heap_bytes"]
    assert heap > 80 * 2**20
    for pid, payload in workers.items():
        assert pid != master
        uss = payload["memory"]["uss"]
        assert uss < 0.10 * heap, f"worker {pid}: {uss / 2**20:.1f} MiB of {heap / 2**20:.0f}"
    text = log.read_text()
    assert "forkmem: froze" in text
    # child_exit in the master logged every worker it reaped, the ones we measured included.
    logged = {
        int(line.split("gunicorn worker pid ")[1].split()[0])
        for line in text.splitlines()
        if "gunicorn worker pid" in line and "peak private memory" in line
    }
    assert set(workers) <= logged, text
    assert len(logged) >= WORKERS


def test_without_forkmem_workers_copy_the_heap(tmp_path: Path) -> None:
    log = tmp_path / "gunicorn.log"
    # An explicit empty config: gunicorn would otherwise read ./gunicorn.conf.py, forkmem's.
    plain = tmp_path / "plain.conf.py"
    plain.write_text("")
    args = [
        "-c",
        str(plain),
        "--preload",
        "--workers",
        str(WORKERS),
        "--worker-class",
        "sync",
        "gunicorn_app:app",
    ]
    with _gunicorn(args, log) as (base, _proc):
        workers = _sample_workers(base, want=2)
    heap = next(iter(workers.values()))["heap_bytes"]
    for pid, payload in workers.items():
        uss = payload["memory"]["uss"]
        assert uss > 0.30 * heap, f"worker {pid}: {uss / 2**20:.1f} MiB of {heap / 2**20:.0f}"
    assert "forkmem: " not in log.read_text()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"warmup": 1},
        {"warmup": False, "immortalize": True},
        {"sample_memory": "no"},
        {"duty_cycle": 2.0},
    ],
)
def test_configure_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    from forkmem.errors import InvalidArgument
    from forkmem.integrations import gunicorn as hooks

    with pytest.raises(InvalidArgument):
        hooks.configure(**kwargs)
