"""forkmem.pool: real pools, real forks, private memory read from /proc.

The parent builds ~100 MiB of small GC-tracked objects; a worker runs gc.collect() and reports
its own private memory (USS). Without a freeze that collection touches every object and copies
most of the heap; with forkmem's pools it must stay under 10% of it.
"""

from __future__ import annotations

import gc
import logging
import multiprocessing
import os
import subprocess
import sys
import textwrap
import warnings
from typing import TYPE_CHECKING

import pytest

import forkmem
from _pool_scripts import run_app, write_app
from forkmem.errors import ForkmemWarning, InvalidArgument
from forkmem.pool import fork_pool, process_pool_executor

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.linux_only

MiB = 1024 * 1024
HEAP_ITEMS = 900_000  # ~100 MiB of one-item lists (each list, its item array and an int)


def _private_after_collect(_: object = None) -> int:
    gc.collect()
    return forkmem.memory().uss


@pytest.fixture(scope="module")
def heap() -> Iterator[int]:
    """Build the parent heap once; yields its size in bytes (anonymous RSS growth)."""
    gc.collect()
    before = forkmem.rss_breakdown().rss_anon
    data = [[i] for i in range(HEAP_ITEMS)]
    size = forkmem.rss_breakdown().rss_anon - before
    assert size > 80 * MiB, f"the test heap is only {size / MiB:.0f} MiB"
    yield size
    del data
    gc.collect()


def test_plain_fork_pool_copies_the_heap(heap: int) -> None:
    # The baseline the other tests improve on: without a freeze the worker copies its heap.
    with multiprocessing.get_context("fork").Pool(1) as pool:
        private = pool.apply(_private_after_collect)
    assert private > 0.3 * heap, f"baseline worker private {private / MiB:.1f} MiB"


@pytest.mark.parametrize("unfreeze", [True, False])
def test_fork_pool_worker_stays_shared(heap: int, unfreeze: bool) -> None:
    frozen_before = gc.get_freeze_count()
    with fork_pool(2, context="fork", unfreeze=unfreeze) as pool:
        privates = pool.map(_private_after_collect, range(2), chunksize=1)
    try:
        assert max(privates) < 0.1 * heap, [p / MiB for p in privates]
        if unfreeze:
            assert gc.get_freeze_count() == 0
        else:
            assert gc.get_freeze_count() > frozen_before
    finally:
        gc.unfreeze()


def test_fork_pool_restarted_workers_stay_shared(heap: int) -> None:
    # maxtasksperchild=1: the second and third tasks run in workers the pool forked later, from
    # its handler thread, after the parent heap was unfrozen.
    with warnings.catch_warnings():
        # 3.12+: forking from the pool's thread is multi-threaded fork (the stdlib's own pattern).
        warnings.simplefilter("ignore", DeprecationWarning)
        with fork_pool(1, context="fork", maxtasksperchild=1) as pool:
            privates = [pool.apply(_private_after_collect) for _ in range(3)]
    assert max(privates) < 0.1 * heap, [p / MiB for p in privates]
    assert gc.get_freeze_count() == 0


def test_fork_pool_with_warmup(heap: int) -> None:
    # forkmem.warmup() instead of a plain collect-and-freeze: the worker stays shared too.
    with fork_pool(1, context="fork", warmup=True) as pool:
        private = pool.apply(_private_after_collect)
    assert private < 0.1 * heap, private / MiB
    assert gc.get_freeze_count() == 0


def test_process_pool_executor_fork(heap: int) -> None:
    with process_pool_executor(2, context="fork") as executor:
        # Every worker started inside the freeze, before any submit().
        assert len(executor._processes) == 2  # type: ignore[attr-defined]
        privates = list(executor.map(_private_after_collect, range(4)))
    assert max(privates) < 0.1 * heap, [p / MiB for p in privates]
    assert gc.get_freeze_count() == 0


def test_fork_pool_initializer_runs(tmp_path: Path) -> None:
    marker = tmp_path / "init"
    marker.mkdir()
    with fork_pool(2, _touch, (str(marker),), context="fork") as pool:
        pids = set(pool.map(_pid, range(8), chunksize=1))
    assert {int(p.name) for p in marker.iterdir()} >= pids


def _touch(directory: str) -> None:
    open(f"{directory}/{os.getpid()}", "w").close()


def _pid(_: object) -> int:
    return os.getpid()


def test_sample_memory_logs_when_workers_exit(tmp_path: Path) -> None:
    log_file = tmp_path / "forkmem.log"
    handler = logging.FileHandler(log_file)
    logger = logging.getLogger("forkmem")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        pool = fork_pool(2, context="fork", sample_memory=True)
        pids = set(pool.map(_pid, range(4), chunksize=1))
        pool.close()
        pool.join()  # workers leave normally: their finalizers log the peak
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        handler.close()
    lines = [line for line in log_file.read_text().splitlines() if "peak private memory" in line]
    assert len(lines) == 2, lines
    logged = {int(line.split(" pid ")[1].split()[0]) for line in lines}
    assert pids <= logged


def test_spawn_pool_warns_and_works() -> None:
    with pytest.warns(ForkmemWarning, match="spawn"):
        pool = fork_pool(1, context="spawn")
    with pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_spawn_executor_warns_and_works() -> None:
    with pytest.warns(ForkmemWarning, match="spawn"):
        executor = process_pool_executor(1, context="spawn")
    with executor:
        assert list(executor.map(abs, [-3])) == [3]


@pytest.mark.parametrize(
    ("call", "kwargs"),
    [
        (fork_pool, {"processes": 0}),
        (fork_pool, {"processes": True}),
        (fork_pool, {"context": "teleport"}),
        (fork_pool, {"context": 3}),
        (fork_pool, {"maxtasksperchild": -1}),
        (fork_pool, {"initializer": 42}),
        (fork_pool, {"initargs": 5}),
        (process_pool_executor, {"initargs": None}),
        (process_pool_executor, {"max_workers": "2"}),
        (process_pool_executor, {"context": "nope"}),
        (process_pool_executor, {"max_tasks_per_child": 0}),
        (process_pool_executor, {"sample_memory": "yes"}),
        (fork_pool, {"unfreeze": None}),
        (fork_pool, {"warmup": 1}),
    ],
)
def test_bad_arguments_raise_invalid_argument(call: object, kwargs: dict[str, object]) -> None:
    frozen_before = gc.get_freeze_count()
    with pytest.raises(InvalidArgument):
        call(**kwargs)  # type: ignore[operator]
    assert gc.get_freeze_count() == frozen_before  # nothing frozen, nothing left frozen


# The shared heap lives in a module the fork server preloads by name (CPython 3.10-3.13 never
# preload __main__ in the fork server: its path is looked up under a key the server is not given).
# The task lives in a light module, so the parent itself never builds the heap.
_FORKSERVER_HEAP = "HEAP = [[i] for i in range({items})]\n"

_FORKSERVER_TASKS = textwrap.dedent(
    """
    import gc
    import forkmem

    def private_after_collect(_=None):
        gc.collect()
        return forkmem.memory().uss
    """
)

_FORKSERVER_APP = textwrap.dedent(
    """
    import json, multiprocessing, sys
    from forkmem.pool import fork_pool, process_pool_executor
    from fs_tasks import private_after_collect

    if __name__ == "__main__":
        multiprocessing.set_forkserver_preload(["fs_heap"])
        if sys.argv[1] == "baseline":
            with multiprocessing.get_context("forkserver").Pool(1) as pool:
                result = {"baseline": [pool.apply(private_after_collect)]}
        else:
            with fork_pool(2, context="forkserver") as pool:
                result = {"pool": pool.map(private_after_collect, range(2), chunksize=1)}
            # Same fork server, already frozen by forkmem's preload: no second one, no warning.
            with process_pool_executor(2, context="forkserver") as executor:
                result["executor"] = list(executor.map(private_after_collect, range(4)))
        print(json.dumps(result))
    """
)


@pytest.fixture(scope="module")
def forkserver_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_app(
        tmp_path_factory.mktemp("forkserver"),
        _FORKSERVER_APP,
        fs_heap=_FORKSERVER_HEAP.format(items=HEAP_ITEMS),
        fs_tasks=_FORKSERVER_TASKS,
    )


def _run_script(path: Path, kind: str) -> dict[str, list[int]]:
    result: dict[str, list[int]] = run_app(path, kind, "-W", "error::forkmem.ForkmemWarning")
    return result


def test_plain_forkserver_pool_copies_the_heap(forkserver_script: Path, heap: int) -> None:
    # The heap lives in the fork server (preloaded): unfrozen, the worker copies it.
    baseline = _run_script(forkserver_script, "baseline")["baseline"]
    assert max(baseline) > 0.3 * heap, [p / MiB for p in baseline]


def test_forkserver_workers_stay_shared(forkserver_script: Path, heap: int) -> None:
    # forkmem's preload, last in the list, freezes the fork server's heap.
    result = _run_script(forkserver_script, "forkmem")
    for kind in ("pool", "executor"):
        assert max(result[kind]) < 0.1 * heap, (kind, [p / MiB for p in result[kind]])


def test_forkserver_already_running_warns(tmp_path: Path) -> None:
    script = tmp_path / "late.py"
    script.write_text(
        textwrap.dedent(
            """
            import multiprocessing, warnings
            from forkmem.pool import fork_pool
            if __name__ == "__main__":
                with multiprocessing.get_context("forkserver").Pool(1) as p:
                    p.apply(abs, (-1,))
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    with fork_pool(1, context="forkserver") as pool:
                        assert pool.apply(abs, (-2,)) == 2
                print([str(w.message) for w in caught if "fork server" in str(w.message)])
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "already running" in proc.stdout
