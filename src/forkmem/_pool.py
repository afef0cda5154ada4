"""The process pool behind `forkmem.pool.fork_pool()`: one that survives killed workers.

`multiprocessing.pool.Pool` feeds every worker from one shared pipe guarded by one shared
lock, and collects every result through another. A worker ``SIGKILL``-ed (the OOM killer) while
it holds the read lock, idle in ``get()``, leaves that lock taken for good: no worker can take
another task and ``terminate()`` itself blocks on the lock. One killed in a task loses the task:
nothing records which task a worker had, so its result never arrives and ``close()``/``join()``
wait for it forever.

This pool keeps the stdlib's public methods and result objects (it subclasses ``Pool``; ``apply``,
``map``, ``imap`` and their callbacks are the stdlib's own code) and replaces what is under them:

- every worker has its own duplex pipe, so no lock is shared between processes;
- one dispatcher thread in the parent hands each worker one task at a time and remembers it,
  reads the results, and waits on every worker's process sentinel as well as its pipe (the way
  `concurrent.futures.ProcessPoolExecutor` notices a dead worker);
- a worker that dies mid-task fails *that* task with `WorkerLost` and is replaced;
  a worker that dies idle is replaced, and nothing else notices;
- ``terminate()`` kills the workers and fails every task not finished, so no ``get()`` waits
  forever; ``close()`` + ``join()`` return once every task has returned or failed.

A worker can also ask to leave after its current task (memory recycling): it sends a
``recycle`` message and the parent stops giving it work, then replaces it.

Tasks are never retried: a task that may have run is failed, not run a second time.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing.connection
import multiprocessing.pool
import os
import queue
import threading
import time
import warnings
from multiprocessing import util
from typing import TYPE_CHECKING, Any

from forkmem._pool_process import new_pool_process
from forkmem._pool_worker import RecycleNotice, WorkerLink, worker_main
from forkmem._wakeup import Waker
from forkmem.errors import WorkerLost

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["SupervisedPool"]

_logger = logging.getLogger("forkmem.pool")

_RUN = multiprocessing.pool.RUN
_CLOSE = multiprocessing.pool.CLOSE
_TERMINATE = multiprocessing.pool.TERMINATE

#: Seconds a worker gets to leave after SIGTERM (terminate) or the stop message (join) before
#: it is killed.
SHUTDOWN_GRACE = 5.0


class _Worker:
    """The parent's record of one worker."""

    __slots__ = ("conn", "notice", "process", "retiring", "running", "served", "started", "task")

    def __init__(self, process: Any, conn: multiprocessing.connection.Connection) -> None:
        self.process = process
        self.conn = conn
        self.task: tuple[Any, ...] | None = None  # the task handed to it, until its result
        self.running = False  # it said it started that task
        self.served = 0  # tasks it has finished
        self.retiring = False
        self.notice: RecycleNotice | None = None
        self.started = time.monotonic()


class SupervisedPool(multiprocessing.pool.Pool):
    """A ``multiprocessing.pool.Pool`` that survives killed workers (see the module docstring)."""

    Process = staticmethod(new_pool_process)

    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any = None,
        *,
        worker_setup: Callable[[WorkerLink, Callable[[], int]], Callable[[], bool]] | None = None,
        on_recycle: Callable[[SupervisedPool, int, RecycleNotice], None] | None = None,
    ) -> None:
        # The attributes the stdlib's public methods and __del__ use, first (as the stdlib does).
        self._pool: list[Any] = []
        self._state = multiprocessing.pool.INIT
        self._ctx = context or multiprocessing.get_context()
        self._taskqueue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._waker = Waker()
        self._change_notifier = self._waker
        self._cache = multiprocessing.pool._PoolCache(notifier=self._waker)  # type: ignore[attr-defined]
        self._maxtasksperchild = maxtasksperchild
        self._initializer = initializer
        self._initargs = tuple(initargs)
        self._worker_setup = worker_setup
        # Called with (pool, worker pid, notice) when a worker reports it is being recycled.
        self.on_recycle = on_recycle
        if processes is None:
            processes = os.cpu_count() or 1
        self._processes = processes
        self._workers: list[_Worker] = []
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self._pending_cond = threading.Condition()
        self._feeding_done = False
        self._early_deaths = 0
        self._lost = 0
        try:
            for _ in range(processes):
                self._start_worker()
        except Exception:
            for worker in self._workers:
                if worker.process.exitcode is None:
                    worker.process.kill()
                worker.process.join()
            self._waker.close()
            raise
        self._feeder = threading.Thread(target=self._feed, name="forkmem-pool-feeder", daemon=True)
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="forkmem-pool-dispatcher", daemon=True
        )
        self._feeder.start()
        self._dispatcher.start()
        # Same rule as the stdlib: a pool still running at interpreter exit is terminated.
        self._terminate = util.Finalize(self, self._terminate_now, exitpriority=15)
        self._state = _RUN

    # -- the stdlib methods this pool replaces --------------------------------------------

    def __reduce__(self) -> Any:
        raise NotImplementedError("pool objects cannot be passed between processes or pickled")

    def __del__(self, _warn: Any = warnings.warn, RUN: str = _RUN) -> None:
        if getattr(self, "_state", None) == RUN:
            _warn(f"unclosed running multiprocessing pool {self!r}", ResourceWarning, source=self)

    def _repopulate_pool(self) -> None:  # the stdlib's hook; the dispatcher does this itself
        self._waker.put()

    def close(self) -> None:
        if self._state == _RUN:
            self._state = _CLOSE
            self._taskqueue.put(None)
            self._waker.put()

    def terminate(self) -> None:
        self._state = _TERMINATE
        self._terminate()

    def join(self) -> None:
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        if self._state not in (_CLOSE, _TERMINATE):
            raise ValueError("In unknown state")
        self._join_threads()

    # -- shutdown ----------------------------------------------------------------------

    def _terminate_now(self) -> None:
        self._state = _TERMINATE
        self._taskqueue.put(None)
        with self._pending_cond:
            self._pending_cond.notify_all()
        self._waker.put()
        self._join_threads()

    def _join_threads(self) -> None:
        if self._dispatcher is not threading.current_thread():
            self._dispatcher.join()
        if self._feeder is not threading.current_thread():
            # After terminate() the feeder may sit inside a user's iterable (or an imap()
            # buffersize semaphore) that never yields again; it is a daemon, do not wait long.
            self._feeder.join(1.0 if self._state == _TERMINATE else None)

    # -- the feeder thread: user task sequences -> the pending deque ----------------------

    def _feed(self) -> None:
        try:
            for taskseq, set_length in iter(self._taskqueue.get, None):
                if self._state == _TERMINATE:
                    self._fail_unfed(taskseq, set_length, 0)
                    continue
                count = 0
                try:
                    for task in taskseq:
                        if not self._push(task):
                            # Terminated while feeding: what is left never runs.
                            self._fail_unfed(taskseq, set_length, count + 1, task)
                            break
                        count += 1
                    else:
                        if set_length is not None:
                            set_length(count)
                except Exception:
                    # The stdlib's task generators guard the user's iterable themselves.
                    _logger.exception("forkmem pool: a task sequence raised")
        finally:
            with self._pending_cond:
                self._feeding_done = True
            self._waker.put()

    def _push(self, task: tuple[Any, ...]) -> bool:
        # Bounded like the stdlib's pipe buffer: a huge imap() must not be read all at once.
        with self._pending_cond:
            while len(self._pending) >= 2 * self._processes and self._state != _TERMINATE:
                self._pending_cond.wait()
            if self._state == _TERMINATE:
                return False
            self._pending.append(task)
        self._waker.put()
        return True

    def _fail_unfed(
        self,
        taskseq: Iterable[tuple[Any, ...]],
        set_length: Callable[[int], None] | None,
        count: int,
        first: tuple[Any, ...] | None = None,
    ) -> None:
        error = WorkerLost("the pool was terminated before this task ran")
        if first is not None:
            self._set_result(first[0], first[1], (False, error))
        if set_length is not None:
            # imap()/imap_unordered(): the first task that never ran raises, then the iterator
            # ends (the iterable may be endless; it is not read further).
            if first is None:
                job = getattr(set_length, "__self__", None)
                if job is not None:
                    self._set_result(job._job, count, (False, error))
                    count += 1
            set_length(count)
            return
        # map()/apply(): a finite list of tasks, each must complete.
        try:
            for task in taskseq:
                self._set_result(task[0], task[1], (False, error))
        except Exception:
            _logger.debug("forkmem pool: a task sequence failed while terminating", exc_info=True)

    # -- the dispatcher thread -----------------------------------------------------------

    def _set_result(self, job: Any, index: int, outcome: tuple[bool, Any]) -> None:
        result = self._cache.get(job)
        if result is None:
            return
        try:
            result._set(index, outcome)
        except Exception:
            # A user callback raised: the stdlib's result thread would die and hang the pool.
            # The value is stored before callbacks run; mark it ready so get() returns it.
            _logger.exception("forkmem pool: a result callback raised")
            event = getattr(result, "_event", None)
            if event is not None:
                event.set()
                self._cache.pop(job, None)

    def _close_fds_for_child(self) -> tuple[int, ...]:
        if self._ctx.get_start_method() != "fork":
            return ()  # the child inherits no descriptors of ours
        fds = [w.conn.fileno() for w in self._workers if not w.conn.closed]
        fds.extend(self._waker.fds())
        return tuple(fds)

    def _start_worker(self) -> _Worker:
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        process = self.Process(
            self._ctx,
            target=worker_main,
            args=(
                child_end,
                self._close_fds_for_child(),
                self._initializer,
                self._initargs,
                self._maxtasksperchild,
                self._worker_setup,
            ),
        )
        process.name = process.name.replace("Process", "PoolWorker")
        process.daemon = True
        try:
            process.start()
        finally:
            # Only the worker may hold its end: its death then reads as end-of-file here.
            child_end.close()
        worker = _Worker(process, parent_end)
        self._workers.append(worker)
        if self._state == multiprocessing.pool.INIT:
            self._pool.append(process)
        return worker

    def _assign(self) -> None:
        for worker in self._workers:
            if worker.task is not None or worker.retiring or worker.conn.closed:
                continue
            with self._pending_cond:
                if not self._pending:
                    return
                task = self._pending.popleft()
                self._pending_cond.notify()
            try:
                worker.conn.send(task)
            except (OSError, EOFError):
                # It died before it could take it: the task never ran, someone else runs it.
                self._requeue(task)
                worker.retiring = True
                continue
            except Exception as exc:  # the task's arguments do not pickle
                self._set_result(task[0], task[1], (False, exc))
                continue
            worker.task = task
            worker.running = False

    def _requeue(self, task: tuple[Any, ...]) -> None:
        with self._pending_cond:
            self._pending.appendleft(task)

    def _read(self, worker: _Worker) -> bool:
        """Read one message from ``worker``; ``False`` when its pipe reached end-of-file."""
        try:
            message = worker.conn.recv()
        except (EOFError, OSError):
            return False  # died, possibly mid-message
        kind = message[0]
        if kind == "start":
            worker.running = True
            worker.served += 1
        elif kind == "result":
            _, job, index, outcome = message
            worker.task = None
            worker.running = False
            self._set_result(job, index, outcome)
        elif kind == "recycle":
            notice: RecycleNotice = message[1]
            worker.notice = notice
            worker.retiring = True
            if worker.task is None and not notice.hard:
                self._stop_worker(worker)
            hook = self.on_recycle
            if hook is not None:
                try:
                    hook(self, worker.process.pid, notice)
                except Exception:
                    _logger.exception("forkmem pool: the recycle hook raised")
        return True

    def _stop_worker(self, worker: _Worker) -> None:
        with contextlib.suppress(OSError, EOFError):
            worker.conn.send(None)

    def _reap(self, worker: _Worker) -> None:
        # Results it wrote before it died are still in the pipe: take them first.
        while not worker.conn.closed:
            try:
                if not worker.conn.poll(0):
                    break
            except (OSError, EOFError):
                break
            if not self._read(worker):
                break
        worker.process.join(SHUTDOWN_GRACE)
        exitcode = worker.process.exitcode
        pid = worker.process.pid
        if worker.task is not None and not worker.running:
            self._requeue(worker.task)  # handed over but never started: it runs elsewhere
            worker.task = None
        if worker.task is not None:
            job, index = worker.task[0], worker.task[1]
            worker.task = None
            self._lost += 1
            if worker.notice is not None and worker.notice.hard:
                message = f"pool worker pid {pid} was ended by forkmem: {worker.notice.message}"
            else:
                how = (
                    f"signal {-exitcode}"
                    if exitcode is not None and exitcode < 0
                    else (f"exit code {exitcode}")
                )
                message = f"pool worker pid {pid} died ({how}) while running this task"
            _logger.warning("forkmem: %s", message)
            self._set_result(job, index, (False, WorkerLost(message, pid=pid, exitcode=exitcode)))
        worker.conn.close()
        self._workers.remove(worker)
        # A worker that exits on its own (not killed) before it ever started a task: most
        # likely its initializer failed, and the next one would fail the same way.
        failed_start = exitcode is not None and exitcode > 0 and not worker.served
        self._early_deaths = self._early_deaths + 1 if failed_start else 0

    def _work_left(self) -> bool:
        with self._pending_cond:
            return bool(self._pending) or not self._feeding_done

    def _repopulate(self) -> None:
        if self._state == _TERMINATE:
            return
        if self._state == _CLOSE and not self._work_left():
            return
        missing = self._processes - len(self._workers)
        if missing <= 0:
            return
        if self._early_deaths:
            # Workers whose start keeps failing are restarted with a growing pause.
            time.sleep(min(2.0, 0.05 * 2 ** min(self._early_deaths, 6)))
        for _ in range(missing):
            try:
                self._start_worker()
            except Exception:
                _logger.exception("forkmem pool: could not start a worker")
                time.sleep(0.5)
                break
        # Never empty: map() sizes its chunks from len(self._pool).
        self._pool[:] = [w.process for w in self._workers] or self._pool

    def _dispatch(self) -> None:
        try:
            self._dispatch_loop()
        finally:
            self._shutdown_workers()
            self._fail_everything_left()
            self._waker.close()

    def _dispatch_loop(self) -> None:
        while self._state != _TERMINATE:
            self._assign()
            busy = any(w.task is not None for w in self._workers)
            if self._state == _CLOSE and not busy and not self._work_left():
                return
            waitables: list[Any] = [self._waker]
            for worker in self._workers:
                waitables.append(worker.conn)
                waitables.append(worker.process.sentinel)
            ready = set(multiprocessing.connection.wait(waitables))
            self._waker.drain()
            dead = []
            for worker in list(self._workers):
                ended = worker.conn in ready and not self._read(worker)
                if ended or worker.process.sentinel in ready:
                    dead.append(worker)
            for worker in dead:
                self._reap(worker)
            self._repopulate()

    def _shutdown_workers(self) -> None:
        terminating = self._state == _TERMINATE
        for worker in self._workers:
            if terminating:
                if worker.process.exitcode is None:
                    worker.process.terminate()
            else:
                self._stop_worker(worker)
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in self._workers:
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join(SHUTDOWN_GRACE)
        for worker in list(self._workers):
            if not terminating:
                # A clean stop: read the last messages, fail any task it still had.
                self._reap(worker)
                continue
            if worker.task is not None:
                job, index = worker.task[0], worker.task[1]
                worker.task = None
                self._set_result(
                    job,
                    index,
                    (
                        False,
                        WorkerLost(
                            "the pool was terminated while this task ran"
                            if worker.running
                            else "the pool was terminated before this task ran",
                            pid=worker.process.pid,
                            exitcode=worker.process.exitcode,
                        ),
                    ),
                )
            worker.conn.close()
            self._workers.remove(worker)

    def _fail_everything_left(self) -> None:
        error = WorkerLost("the pool was terminated before this task ran")
        with self._pending_cond:
            pending, self._pending = list(self._pending), collections.deque()
            self._pending_cond.notify_all()
        for task in pending:
            self._set_result(task[0], task[1], (False, error))
