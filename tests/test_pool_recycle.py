"""fork_pool(max_private_memory=...): workers that leak are replaced after a task; nothing lost."""

from __future__ import annotations

import logging
import os
import re
import time
from typing import TYPE_CHECKING

import pytest

import forkmem
from forkmem.errors import InvalidArgument, WorkerLost
from forkmem.pool import fork_pool
from forkmem.recycle import RecycleStats, recycle_stats

if TYPE_CHECKING:
    from collections.abc import Iterator
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


def _leak_mib(n: int) -> int:
    _LEAK.append(os.urandom(n * MiB))
    return forkmem.memory().uss


def _private(_: object = None) -> int:
    return forkmem.memory().uss


def _limit() -> int:
    # A fresh worker's USS plus room for a healthy worker's noise.
    with fork_pool(1, context="fork") as pool:
        return int(pool.apply(_private)) + 24 * MiB


def _pool_recycles(before: RecycleStats) -> int:
    return recycle_stats().by_integration.get("pool", 0) - before.by_integration.get("pool", 0)


class _SlowHandler(logging.FileHandler):
    """Writes each line, then holds the logging thread for ``pause`` seconds.

    A worker's recycle decision is logged, then sent to the parent: the pause widens that gap so
    that a worker leaving while its sampler is still inside it (the loss this file tests) happens
    on every run, not only on a loaded machine.
    """

    def __init__(self, path: Path, pause: float) -> None:
        super().__init__(path)
        self.pause = pause

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(record)
        time.sleep(self.pause)


class _RecycleLog:
    """The recycle lines the pool's workers log (they inherit the handler through the fork)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[str]:
        text = self.path.read_text() if self.path.exists() else ""
        return [line for line in text.splitlines() if "recycling pool worker" in line]

    def pids(self) -> list[int]:
        return [int(re.search(r"pid (\d+)", line)[1]) for line in self.lines()]  # type: ignore[index]


@pytest.fixture
def recycle_log(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[_RecycleLog]:
    pause = getattr(request, "param", 0.0)
    path = tmp_path / "recycle.log"
    handler = _SlowHandler(path, pause)
    logger = logging.getLogger("forkmem.recycle")
    logger.addHandler(handler)
    try:
        yield _RecycleLog(path)
    finally:
        logger.removeHandler(handler)
        handler.close()


def test_leaking_workers_are_recycled_and_no_result_is_lost(recycle_log: _RecycleLog) -> None:
    limit = _limit()
    before = recycle_stats()
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
    # Every decision a worker logged reached the parent, including one made as the pool closed;
    # each came from a worker that served tasks, once.
    lines = recycle_log.lines()
    assert len(lines) == recycled, (recycled, lines)
    assert set(recycle_log.pids()) <= pids, (recycle_log.pids(), sorted(pids))
    assert len(set(recycle_log.pids())) == len(lines), lines
    assert "uss" in lines[0]
    assert "served" in lines[0]
    assert "age" in lines[0]


@pytest.mark.parametrize("recycle_log", [0.5], indirect=True)
def test_a_worker_that_leaves_while_logging_its_decision_is_counted(
    recycle_log: _RecycleLog,
) -> None:
    # The worker's main thread sees the decision (it leaves after its task) while the sampler
    # thread still sits in the log call; the notice to the parent must not die with the worker.
    limit = _limit()
    before = recycle_stats()
    pool = fork_pool(2, context="fork", max_private_memory=limit)
    try:
        values = pool.map(_leaky, range(600), chunksize=1)
        deadline = time.monotonic() + 60  # a slow sampler may decide only once they are idle
        while _pool_recycles(before) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        # close(), not terminate() (the with block's exit): terminate() kills the workers.
        pool.close()
        pool.join()
    recycled = _pool_recycles(before)
    assert [v[0] for v in values] == list(range(600))
    assert recycled >= 1, recycled  # 150 MiB leaked over the two workers
    assert len(recycle_log.lines()) == recycled, (recycled, recycle_log.lines())


@pytest.mark.parametrize("recycle_log", [2.0], indirect=True)
def test_a_decision_made_as_the_pool_closes_is_counted(recycle_log: _RecycleLog) -> None:
    limit = _limit()
    before = recycle_stats()
    pool = fork_pool(1, context="fork", max_private_memory=limit)
    try:
        assert pool.apply(_leak_mib, (48,)) > limit  # then idle, over the limit
        # Close as soon as the worker has logged its decision, while its sampler is still in
        # the log call (2 s): the pool's stop message reaches a worker that has not yet said so.
        deadline = time.monotonic() + 60
        while not recycle_log.lines() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recycle_log.lines(), "the worker never decided"
    finally:
        pool.close()
        pool.join()
    assert _pool_recycles(before) == len(recycle_log.lines()) == 1, recycle_log.lines()


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
