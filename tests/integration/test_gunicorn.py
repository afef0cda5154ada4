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
        # Sync workers sample their memory from post_request: no thread but the main one.
        tasks = {pid: len(os.listdir(f"/proc/{pid}/task")) for pid in workers}
    assert set(tasks.values()) == {1}, tasks
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
        {"sampler": "threads"},
        {"sampler": "requests", "max_private_memory": "1 GiB", "max_private_memory_hard": "2 GiB"},
    ],
)
def test_configure_rejects_bad_arguments(kwargs: dict[str, Any]) -> None:
    from forkmem.errors import InvalidArgument
    from forkmem.integrations import gunicorn as hooks

    with pytest.raises(InvalidArgument):
        hooks.configure(**kwargs)


_SYNC = "gunicorn.workers.sync.SyncWorker"
_HARD = {"max_private_memory": "1 GiB", "max_private_memory_hard": "2 GiB"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # a fork while pytest has threads
@pytest.mark.parametrize(
    ("worker_class", "options", "forkmem_post_request", "threaded"),
    [
        (_SYNC, {}, True, False),
        ("gunicorn.workers.gthread.ThreadWorker", {}, True, False),
        ("gunicorn.workers.base_async.AsyncWorker", {}, True, True),  # gevent's, eventlet's base
        (_SYNC, _HARD, True, True),  # the hard limit ends a worker in the middle of a request
        (_SYNC, {"sampler": "thread"}, True, True),
        (_SYNC, {}, False, True),  # the config's own post_request may not call forkmem's
        (_SYNC, {"sampler": "requests"}, False, False),
    ],
)
def test_which_workers_sample_in_a_thread(
    worker_class: str, options: dict[str, Any], forkmem_post_request: bool, threaded: bool
) -> None:
    """The hooks on a real gunicorn worker object, in a real forked child, as the arbiter runs
    them: the sampling thread only where it is needed, and the master's slot filled either way."""
    import importlib
    import threading

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    from forkmem.integrations import gunicorn as hooks

    module, name = worker_class.rsplit(".", 1)
    cfg = Config()
    if forkmem_post_request:
        cfg.set("post_request", hooks.post_request)
    worker = getattr(importlib.import_module(module), name)(
        0, os.getpid(), [], None, 30, cfg, Logger(cfg)
    )
    hooks.pre_fork(None, worker)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the worker
        code = 1
        try:
            hooks.configure(**options)
            hooks.post_fork(None, worker)
            names = [t.name for t in threading.enumerate()]
            for _ in range(3):
                hooks.post_request(worker, None, {}, None)
            hooks.worker_exit(None, worker)
            os.write(write, json.dumps(names).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        with os.fdopen(read, "rb") as pipe:
            names = json.loads(pipe.read() or b"null")
    finally:
        _, status = os.waitpid(pid, 0)
        worker.tmp.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert names is not None
    assert ("forkmem-sampler" in names) is threaded, names
    peak = worker._forkmem_slot.read()
    worker._forkmem_slot.close()
    assert peak is not None
    assert peak.pid == pid
    assert peak.samples >= 2  # the first (post_fork or the thread's) and worker_exit's
