"""Worker pools that keep the parent's heap shared: ``python examples/pool.py``.

Builds ~100 MiB of small objects, then asks each worker to run ``gc.collect()`` and report its
private memory (USS), for a plain multiprocessing pool and for forkmem's, under "fork" and
"forkserver". Under "forkserver" the heap has to live in the fork server: this file is preloaded
there by name (as module ``pool``), and builds the heap when imported that way.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import subprocess
import sys
from typing import Any

import forkmem
from forkmem.pool import fork_pool, process_pool_executor

MIB = int(os.environ.get("FORKMEM_EXAMPLE_HEAP_MIB", "100"))


def build_heap(mib: int) -> tuple[list[list[Any]], int]:
    """~``mib`` MiB of small GC-tracked lists; returns them and the anonymous memory they took."""
    before = forkmem.rss_breakdown().rss_anon
    records = [[i, f"item-{i}"] for i in range(mib * 5_600)]
    return records, forkmem.rss_breakdown().rss_anon - before


# Preloaded by name in the fork server: the fork server builds (and forkmem freezes) the heap.
HEAP, HEAP_BYTES = build_heap(MIB) if __name__ == "pool" else ([], 0)


def private_after_collect(_: object = None) -> int:
    """Run in a worker: collect, then return this worker's private memory in bytes."""
    gc.collect()
    return forkmem.memory().uss


def _row(label: str, privates: list[int], heap: int) -> str:
    worst = max(privates)
    return f"{label:<44} {forkmem.format_bytes(worst):>10}  {worst / heap:6.1%}"


def _forkserver(plain: bool) -> list[int]:
    # The fork server finds preloaded modules on its own sys.path, which PYTHONPATH reaches.
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    multiprocessing.set_forkserver_preload(["pool"])
    if plain:
        with multiprocessing.get_context("forkserver").Pool(2) as pool:
            return pool.map(private_after_collect, [0, 1], 1)
    with fork_pool(2, context="forkserver") as pool:
        return pool.map(private_after_collect, [0, 1], 1)


def main() -> None:
    """Print the worst worker's private memory for each kind of pool."""
    global HEAP, HEAP_BYTES
    HEAP, HEAP_BYTES = build_heap(MIB)
    heap = HEAP_BYTES
    print(f"parent heap {forkmem.format_bytes(heap)}; worst worker's USS after gc.collect():")
    fork = multiprocessing.get_context("fork")
    with fork.Pool(2) as pool:
        print(_row("fork, multiprocessing Pool", pool.map(private_after_collect, [0, 1], 1), heap))
    with fork_pool(2, context="fork") as pool:
        print(_row("fork, forkmem fork_pool", pool.map(private_after_collect, [0, 1], 1), heap))
    with process_pool_executor(2, context="fork") as executor:
        privates = list(executor.map(private_after_collect, range(4)))
        print(_row("fork, forkmem process_pool_executor", privates, heap))
    # One fork server per process: each forkserver case runs in a fresh interpreter.
    for label, mode in (
        ("forkserver, multiprocessing Pool", "forkserver-plain"),
        ("forkserver, forkmem fork_pool", "forkserver-forkmem"),
    ):
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), mode],
            capture_output=True, text=True, check=True, timeout=120,
        ).stdout  # fmt: skip
        print(_row(label, json.loads(out), heap))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("forkserver-"):
        print(json.dumps(_forkserver(plain=sys.argv[1] == "forkserver-plain")))
    else:
        main()
