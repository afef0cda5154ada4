"""fork_pool under SIGKILL (the OOM killer's signal): no task hangs, no shutdown hangs.

multiprocessing.pool.Pool loses the task of a killed worker (its result never arrives, so
close()/join() wait forever) and, when an idle worker is killed inside the shared queue's lock,
stops serving altogether (terminate() blocks on that lock too). forkmem's pool must fail the
lost task with WorkerLost, replace the worker and always shut down.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from typing import Any

import pytest

from forkmem.errors import ChildCrashed, ForkmemError, WorkerLost
from forkmem.pool import fork_pool

pytestmark = [pytest.mark.linux_only, pytest.mark.timeout(120)]


def _square_slowly(x: int) -> int:
    time.sleep(random.random() * 0.004)
    return x * x


def _sleep(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def _workers(pool: Any, busy: bool) -> list[int]:
    # The pool's own record of which worker holds a task it started (not a guess from timing).
    return [
        w.process.pid
        for w in list(pool._workers)
        if w.process.exitcode is None and (w.running if busy else w.task is None)
    ]


def _killer(pool: Any, stop: threading.Event, kills: dict[str, int]) -> None:
    rng = random.Random(1234)
    while not stop.wait(rng.uniform(0.005, 0.03)):
        victims = _workers(pool, busy=True)
        if victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(rng.choice(victims), signal.SIGKILL)
                kills["busy"] += 1


# The forkserver run is shorter: each replacement there re-imports this module (~0.1 s).
@pytest.mark.parametrize(("context", "bursts"), [("fork", 10), ("forkserver", 3)])
def test_thousand_tasks_with_random_sigkills(context: str, bursts: int) -> None:
    pool = fork_pool(4, context=context)
    kills = {"busy": 0, "idle": 0}
    stop = threading.Event()
    killer = threading.Thread(target=_killer, args=(pool, stop, kills), daemon=True)
    results: list[Any] = []
    killer.start()
    try:
        for burst in range(bursts):
            tasks = range(burst * 100, (burst + 1) * 100)
            batch = [pool.apply_async(_square_slowly, (i,)) for i in tasks]
            for result in batch:
                result.wait(60)
            results += batch
            # Between bursts every worker is idle (in its pipe read, where the stdlib's
            # workers hold the shared queue's lock): kill two of them.
            for pid in _workers(pool, busy=False)[:2]:
                # The killer thread may have ended it (and the pool reaped it) since the list.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                    kills["idle"] += 1
        returned = lost = 0
        errors: list[WorkerLost] = []
        for i, result in enumerate(results):
            try:
                value = result.get(timeout=60)
            except WorkerLost as exc:
                errors.append(exc)
                lost += 1
                continue
            assert value == i * i
            returned += 1
    finally:
        stop.set()
        killer.join()
    assert returned + lost == bursts * 100
    # -9, or None when a loaded machine had not reported the exit status within the grace time.
    # (255 was the stdlib's forkserver status read racing another thread's: forkmem._pool_process.)
    wrong = [
        (str(e), e.pid, e.exitcode)
        for e in errors
        if e.pid is None or e.exitcode not in (-signal.SIGKILL, None)
    ]
    assert wrong == [], wrong
    assert kills["busy"] >= 5, kills
    assert kills["idle"] >= 2 * bursts - 1, kills
    # A kill loses at most the one task its worker had started; idle workers lose none.
    assert lost <= kills["busy"], (lost, kills)
    # Still usable afterwards: every worker slot was refilled.
    assert pool.map(abs, range(-8, 0)) == list(range(8, 0, -1))
    pool.close()
    started = time.monotonic()
    pool.join()
    assert time.monotonic() - started < 10


def test_lost_task_error_is_typed() -> None:
    with fork_pool(1, context="fork") as pool:
        result = pool.apply_async(_sleep, (30,))
        deadline = time.monotonic() + 10
        while not _workers(pool, busy=True):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(_workers(pool, busy=True)[0], signal.SIGKILL)
        with pytest.raises(WorkerLost, match="signal 9") as info:
            result.get(timeout=20)
        assert isinstance(info.value, ChildCrashed)
        assert isinstance(info.value, ChildProcessError)
        assert isinstance(info.value, ForkmemError)
        assert pool.apply(abs, (-3,)) == 3  # the replacement serves


def test_every_idle_worker_killed_then_new_tasks_and_join() -> None:
    # The stdlib's worst case: idle workers killed inside the shared queue's read lock.
    pool = fork_pool(2, context="fork")
    assert pool.map(abs, [-1, -2]) == [1, 2]
    for _ in range(3):
        for pid in _workers(pool, busy=False):
            os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    assert pool.map(abs, range(-20, 0), chunksize=1) == list(range(20, 0, -1))
    pool.close()
    pool.join()


def test_terminate_returns_and_fails_unfinished_tasks() -> None:
    pool = fork_pool(2, context="fork")
    running = [pool.apply_async(_sleep, (60,)) for _ in range(2)]
    queued = pool.map_async(_sleep, [60] * 6, chunksize=1)
    endless = pool.imap(_sleep, iter(lambda: 60, None))  # never runs out
    time.sleep(0.3)
    started = time.monotonic()
    pool.terminate()
    pool.join()
    assert time.monotonic() - started < 8
    for result in running:
        with pytest.raises(WorkerLost, match="terminated"):
            result.get(timeout=1)
    with pytest.raises(WorkerLost, match="terminated"):
        queued.get(timeout=1)
    with pytest.raises(WorkerLost):
        next(endless)


def test_join_returns_after_a_worker_dies_in_the_last_task() -> None:
    pool = fork_pool(2, context="fork")
    result = pool.apply_async(_sleep, (30,))
    while not _workers(pool, busy=True):
        time.sleep(0.01)
    pool.close()
    os.kill(_workers(pool, busy=True)[0], signal.SIGKILL)
    started = time.monotonic()
    pool.join()
    assert time.monotonic() - started < 10
    with pytest.raises(WorkerLost):
        result.get(timeout=0)


def _exit_now(code: int) -> None:
    os._exit(code)


def _fail_init() -> None:
    raise RuntimeError("initializer failed")


def test_failing_initializer_fails_tasks_without_a_fork_loop() -> None:
    # Every worker dies before its first task: the tasks it was handed never ran, so they wait
    # for a worker that starts; terminate() still returns and fails them.
    pool = fork_pool(1, _fail_init, context="fork")
    result = pool.apply_async(abs, (-1,))
    time.sleep(1.0)
    started = time.monotonic()
    pool.terminate()
    assert time.monotonic() - started < 8
    with pytest.raises(WorkerLost):
        result.get(timeout=1)


def test_worker_exit_in_task_is_lost_not_hung() -> None:
    with fork_pool(2, context="fork") as pool:
        with pytest.raises(WorkerLost, match="exit code 3"):
            pool.apply(_exit_now, (3,))
        assert pool.map(abs, [-1, -2, -3]) == [1, 2, 3]


def test_callbacks_and_errors_still_behave_like_the_stdlib() -> None:
    seen: list[object] = []
    with fork_pool(2, context="fork") as pool:
        pool.apply_async(abs, (-4,), callback=seen.append).get(timeout=10)
        with pytest.raises(ZeroDivisionError):
            pool.apply(divmod, (1, 0))
        assert list(pool.imap(abs, range(-5, 0))) == [5, 4, 3, 2, 1]
        assert sorted(pool.imap_unordered(abs, range(-5, 0))) == [1, 2, 3, 4, 5]
        assert pool.starmap(divmod, [(7, 2), (9, 4)]) == [(3, 1), (2, 1)]
        # A callback that raises must not kill the pool's dispatcher.
        assert pool.apply_async(abs, (-1,), callback=lambda _: 1 / 0).get(timeout=10) == 1
        assert pool.apply(abs, (-9,)) == 9
    assert seen == [4]
