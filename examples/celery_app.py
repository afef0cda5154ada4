"""A Celery app with a preloaded heap, to see what ``forkmem.integrations.celery`` saves.

No broker server needed: the filesystem transport and the file result backend keep messages
and results under ``FORKMEM_CELERY_DIR`` (default: ``$TMPDIR/forkmem-celery-example``), laid
out by ``celery_broker.py``, whose ``client()`` the tests and benchmarks send tasks with.

Start a worker (prefork pool, two children)::

    cd examples && celery -A celery_app worker --pool=prefork --concurrency=2 --loglevel=INFO

then, from another shell in ``examples/``::

    python -c "import celery_app as c; print(c.private_after_collect.delay().get(timeout=30))"

``FORKMEM_EXAMPLE_HEAP_MIB`` sizes the heap (default 100); ``FORKMEM_DISABLE=1`` leaves forkmem
out, to compare. Each child logs its peak private memory when it exits.
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from celery import Celery
from celery_broker import configure, prepare

import forkmem
from forkmem.integrations.celery import install

DATA = prepare(
    Path(
        os.environ.get("FORKMEM_CELERY_DIR")
        or Path(tempfile.gettempdir()) / "forkmem-celery-example"
    )
)

# FORKMEM_CELERY_BROKER (e.g. redis://127.0.0.1:6379/0) replaces the filesystem transport.
BROKER = os.environ.get("FORKMEM_CELERY_BROKER") or "filesystem://"
app = configure(Celery("celery_app", broker=BROKER, backend=f"file://{DATA / 'results'}"), DATA)
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_enable_remote_control=False,  # the filesystem transport has no fanout exchange
)


def _build_heap(mib: int) -> tuple[list[list[Any]], int]:
    before = forkmem.rss_breakdown().rss_anon
    # Small GC-tracked containers (~180 bytes each, 5,600 per MiB), like an app's caches.
    records = [[i, f"item-{i}"] for i in range(mib * 5_600)]
    return records, forkmem.rss_breakdown().rss_anon - before


HEAP, HEAP_BYTES = _build_heap(int(os.environ.get("FORKMEM_EXAMPLE_HEAP_MIB", "100")))

if os.environ.get("FORKMEM_DISABLE") != "1":
    # FORKMEM_MAX_PRIVATE_MEMORY="64 MiB" recycles children by their private memory.
    install(app, max_private_memory=os.environ.get("FORKMEM_MAX_PRIVATE_MEMORY") or None)

# Proof for the integration test, only when it asks: every pool child records its pid from a
# forkmem fork hook.
_PID_DIR = os.environ.get("FORKMEM_EXAMPLE_PID_DIR")
if _PID_DIR:

    def _record_pid() -> None:
        with open(os.path.join(_PID_DIR, str(os.getpid())), "a") as f:
            f.write("after_in_child\n")

    forkmem.at_fork(after_in_child=_record_pid, name="example.record_pid")


@app.task
def whoami() -> int:
    """The pid of the pool child running the task."""
    return os.getpid()


@app.task
def private_after_collect() -> dict[str, int]:
    """Collect in the child, then report its private memory next to the parent's heap size."""
    gc.collect()
    usage = forkmem.memory()
    return {"pid": os.getpid(), "uss": usage.uss, "heap_bytes": HEAP_BYTES}


_LEAKED: list[bytes] = []
_RUNS_DIR = os.environ.get("FORKMEM_EXAMPLE_RUNS_DIR")


@app.task
def leak(seq: int) -> list[int]:
    """Leak 1 MiB in the child (a cache that never forgets), ~20 ms of work; [seq, pid]."""
    _LEAKED.append(os.urandom(1 << 20))
    time.sleep(0.02)
    if _RUNS_DIR:  # the test counts every run, to find tasks run twice
        with open(os.path.join(_RUNS_DIR, str(os.getpid())), "a") as f:
            f.write(f"{seq}\n")
    return [seq, os.getpid()]
