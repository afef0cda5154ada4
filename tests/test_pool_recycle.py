"""fork_pool(max_private_memory=...): workers that leak are replaced after a task; nothing lost."""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

import pytest

import forkmem
from forkmem.errors import InvalidArgument, WorkerLost
from forkmem.pool import fork_pool
from forkmem.recycle import RecycleStats, recycle_stats

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [pytest.mark.linux_only, pytest.mark.timeout(120)]

MiB = 2**20
_LEAK: list[bytes] = []


def _leaky(i: int) -> tuple[int, int]:
    _LEAK.append(os.urandom(256 * 1024))  # private, written: counts in USS at once
    time.sleep(0.002)
    return i, os.getpid()


def _healthy(i: int) -> tuple[int, int]:
    scratch = bytearray(256 * 1024)  # allocated and freed: no growth
    del scratch
    time.sleep(0.002)
    return i, os.getpid()


def _private(_: object = None) -> int:
    return forkmem.memory().uss


def _limit() -> int:
    # A fresh worker's USS plus room for a healthy worker's noise.
    with fork_pool(1, context="fork") as pool:
        return int(pool.apply(_private)) + 24 * MiB


def _pool_recycles(before: RecycleStats) -> int:
    return recycle_stats().by_integration.get("pool", 0) - before.by_integration.get("pool", 0)


def test_leaking_workers_are_recycled_and_no_result_is_lost(tmp_path: Path) -> None:
    limit = _limit()
    before = recycle_stats()
    # The workers log the decision; a file handler they inherit collects their lines.
    log_file = tmp_path / "recycle.log"
    handler = logging.FileHandler(log_file)
    logger = logging.getLogger("forkmem")
    logger.addHandler(handler)
    try:
        pool = fork_pool(2, context="fork", max_private_memory=limit)
        results = [pool.apply_async(_leaky, (i,)) for i in range(1000)]
        values = [r.get(timeout=60) for r in results]
        # Workers sample at 1% of a CPU: on a loaded machine a slow sample puts the next one
        # seconds later, after the last task. A worker over the limit is recycled idle too:
        # wait for that (the parent counts it), not for the burst to outlast the sampler.
        deadline = time.monotonic() + 60
        while _pool_recycles(before) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pool.close()
        pool.join()
    finally:
        logger.removeHandler(handler)
        handler.close()
    assert [v[0] for v in values] == list(range(1000))  # every result, in order, none lost
    pids = {v[1] for v in values}
    after = recycle_stats()
    recycled = _pool_recycles(before)
    # 1000 x 256 KiB = 250 MiB leaked over two workers, a limit ~24 MiB above a fresh one.
    assert recycled >= 2, (recycled, after)
    assert len(pids) >= recycled, (sorted(pids), recycled)  # replaced workers served tasks too
    assert after.soft - before.soft == recycled, (after.soft - before.soft, recycled)
    assert after.last is not None
    assert after.last.integration == "pool", after.last
    assert after.last.value > limit == after.last.limit, (limit, after.last)
    assert after.last.samples == 2, after.last
    assert after.last.served > 0, after.last
    lines = [line for line in log_file.read_text().splitlines() if "recycling pool worker" in line]
    # A worker may still decide while the pool shuts down, after the parent stopped listening.
    assert recycled <= len(lines) <= recycled + 2, lines
    assert "uss" in lines[0]
    assert "served" in lines[0]
    assert "age" in lines[0]


def test_healthy_workers_are_not_recycled() -> None:
    limit = _limit()
    before = recycle_stats().total
    with fork_pool(2, context="fork", max_private_memory=limit) as pool:
        values = pool.map(_healthy, range(400), chunksize=1)
    assert len(values) == 400
    assert len({v[1] for v in values}) == 2
    assert recycle_stats().total == before


def test_hard_limit_ends_the_worker_and_fails_its_task() -> None:
    limit = _limit()
    before = recycle_stats().hard
    with fork_pool(1, context="fork", max_private_memory_hard=limit) as pool:
        outcomes = []
        for i in range(2000):
            try:
                outcomes.append(pool.apply(_leaky, (i,)))
            except WorkerLost as exc:
                outcomes.append(exc)
                break
        assert isinstance(outcomes[-1], WorkerLost), len(outcomes)
        assert "ended by forkmem" in str(outcomes[-1]), outcomes[-1]
        assert pool.apply(abs, (-2,)) == 2  # replaced
    # At least this one; more when the sampler caught a worker between two tasks (idle: it is
    # ended too, and no task is lost).
    assert recycle_stats().hard >= before + 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_private_memory": "lots"},
        {"max_private_memory": -1},
        {"max_private_memory": "100 MiB", "max_private_memory_hard": "50 MiB"},
        {"max_private_memory": "100 MiB", "recycle_measure": "vss"},
        {"max_private_memory": "100 MiB", "recycle_samples": 0},
    ],
)
def test_bad_recycle_options_are_typed(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument, match="fork_pool"):
        fork_pool(1, context="fork", **kwargs)  # type: ignore[arg-type]
