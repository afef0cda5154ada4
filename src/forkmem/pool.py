"""Worker pools whose workers start from a frozen heap.

The pattern is Airflow LocalExecutor's: collect, ``gc.freeze()``, start every worker, then
unfreeze in the parent. Each worker keeps its inherited heap in the permanent generation, so its
own ``gc.collect()`` never writes to (and copies) the parent's pages.

Where the freeze has to happen depends on the start method:

- ``"fork"``: in the parent, around the start of the workers (here). Workers that the pool starts
  later (``maxtasksperchild``, a crashed worker) are started under a young-collect-then-freeze.
- ``"forkserver"``: workers are forked from the fork server, not from the parent, so the freeze
  has to run *inside the fork server*, after the modules it preloads. forkmem appends
  `forkmem._forkserver_preload` to the preload list, last, before the server starts. Nothing
  the parent built is in the server: when the parent holds much more private memory than the
  server, a [`ForkmemWarning`][forkmem.ForkmemWarning] names that size and the fix.
- No context: ``"fork"`` where the platform has it, whatever multiprocessing's default is
  (Python 3.14 made ``"forkserver"`` the stdlib's default on Linux; ``fork_pool()`` still forks).
- ``"spawn"``: every worker is a fresh interpreter; nothing can be shared. A
  [`ForkmemWarning`][forkmem.ForkmemWarning] says so and a plain pool is returned.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import multiprocessing.context
import multiprocessing.pool
import multiprocessing.util
import os
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING, Any

from forkmem._disable import disabled
from forkmem._pool import SupervisedPool
from forkmem._pool_recycle import count_recycle, recycling_setup
from forkmem._sampler import Sampler
from forkmem._units import format_bytes
from forkmem._validate import check_bool
from forkmem.errors import ForkmemWarning, InvalidArgument
from forkmem.freeze import block, freeze_around_fork
from forkmem.recycle import RecyclePolicy
from forkmem.usage import memory

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ["fork_pool", "process_pool_executor"]

_logger = logging.getLogger("forkmem.pool")

#: Private memory the parent may hold beyond the fork server's before a forkserver pool warns.
FORKSERVER_GAP_WARN = 32 * 1024 * 1024

#: Module the fork server imports last; importing it freezes the fork server's heap.
PRELOAD_MODULE = "forkmem._forkserver_preload"
_WARMUP_ENV = "FORKMEM_FORKSERVER_WARMUP"

# Set while a pool starts its first workers inside a frozen() block, in that thread only:
# those starts need no per-start freeze. Workers the pool restarts later (from its own
# handler thread) do.
_bulk = threading.local()


def _in_bulk_start() -> bool:
    return bool(getattr(_bulk, "active", False))


def _resolve_context(
    context: str | multiprocessing.context.BaseContext | None,
) -> multiprocessing.context.BaseContext:
    if context is None:
        # Fork, not the stdlib's default (forkserver from 3.14), which shares nothing the parent
        # built. set_start_method() is not consulted: any get_context() call fixes that default
        # too, so an explicit choice cannot be told from an implicit one.
        if "fork" in multiprocessing.get_all_start_methods():
            return multiprocessing.get_context("fork")
        return multiprocessing.get_context()
    if isinstance(context, str):
        try:
            return multiprocessing.get_context(context)
        except ValueError as exc:
            raise InvalidArgument(
                f"context must be a multiprocessing start method "
                f"({', '.join(multiprocessing.get_all_start_methods())}) or a context; "
                f"got {context!r}"
            ) from exc
    if isinstance(context, multiprocessing.context.BaseContext):
        return context
    raise InvalidArgument(
        f"context must be None, a start method name or a multiprocessing context; got {context!r}"
    )


def _check_count(name: str, value: object) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{name} must be a positive integer or None; got {value!r}")


def _check_flags(**flags: object) -> None:
    for name, value in flags.items():
        check_bool(name, value)


def _warn_spawn(what: str) -> None:
    warnings.warn(
        f"{what} uses the 'spawn' start method: every worker is a fresh interpreter, so nothing "
        "of the parent's heap can be shared; forkmem leaves the pool as it is. Use 'fork' or "
        "'forkserver' to share memory.",
        ForkmemWarning,
        stacklevel=3,
    )


def _prepare_forkserver(warmup: bool) -> None:
    """Put forkmem's freeze last in the fork server's preload list, if it has not started yet."""
    # Lazy: the fork server exists only where the platform has that start method.
    from multiprocessing import forkserver

    server = forkserver._forkserver
    preload = list(getattr(server, "_preload_modules", None) or [])
    running = getattr(server, "_forkserver_pid", None) is not None
    if running:
        if preload and preload[-1] == PRELOAD_MODULE:
            return
        warnings.warn(
            "the multiprocessing fork server is already running without forkmem's preload: its "
            "heap is not frozen, so workers forked from it copy what their gc.collect() visits. "
            "Create forkmem pools before anything else starts the fork server.",
            ForkmemWarning,
            stacklevel=4,
        )
        return
    modules = [m for m in preload if m != PRELOAD_MODULE]
    modules.append(PRELOAD_MODULE)
    multiprocessing.set_forkserver_preload(modules)
    # Start it now, so the freeze happens here and not at some later submit(); the server reads
    # the warmup flag from the environment it inherits, which is put back right after.
    previous = os.environ.get(_WARMUP_ENV)
    if warmup:
        os.environ[_WARMUP_ENV] = "1"
    else:
        os.environ.pop(_WARMUP_ENV, None)
    try:
        forkserver.ensure_running()
    finally:
        if previous is None:
            os.environ.pop(_WARMUP_ENV, None)
        else:
            os.environ[_WARMUP_ENV] = previous
    _warn_unshareable(getattr(server, "_forkserver_pid", None))


def _warn_unshareable(server_pid: int | None) -> None:
    """Warn when the parent holds far more private memory than the fork server it forks from.

    The gap is the heap the parent built that forkserver workers cannot inherit; whatever of it
    they need is pickled into or rebuilt in every one of them. A few smaps_rollup reads, plus
    one throwaway child when the parent is big enough to matter: the server forks only once its
    preloads are done, so its size is read after that child has started.
    """
    try:
        mine = memory().uss
        if server_pid is None or mine is None or mine < FORKSERVER_GAP_WARN:
            return
        probe = multiprocessing.get_context("forkserver").Process(target=os.getpid)
        probe.start()
        probe.join()
        server = memory(server_pid).uss
    except (OSError, ValueError, NotImplementedError):  # the server is gone; no USS here
        return
    if server is None:
        return
    gap = mine - server
    if gap < FORKSERVER_GAP_WARN:
        return
    warnings.warn(
        f"this process holds {format_bytes(gap)} more private memory than the fork server its "
        "'forkserver' workers are forked from: none of it can be shared with them, and what a "
        "worker needs of it (initargs, globals it rebuilds) is copied into each one. Use "
        "context='fork', or build that data in a module named in "
        "multiprocessing.set_forkserver_preload([...]) before the first pool.",
        ForkmemWarning,
        stacklevel=4,
    )


class _ForkmemForkProcess(multiprocessing.context.ForkProcess):
    """A ForkProcess whose late starts (pool restarts) happen under a young-collect freeze."""

    def start(self) -> None:
        if _in_bulk_start():
            super().start()
            return
        # The per-fork freeze steps aside when a frozen() block keeps the parent heap frozen.
        handle = freeze_around_fork("young")
        try:
            super().start()
        finally:
            handle.remove()


class _ForkmemPool(SupervisedPool):
    @staticmethod
    def Process(ctx: Any, *args: Any, **kwds: Any) -> Any:
        if ctx.Process is multiprocessing.context.ForkProcess:
            return _ForkmemForkProcess(*args, **kwds)
        return ctx.Process(*args, **kwds)


class _ForkmemExecutor(ProcessPoolExecutor):
    _forkmem_fork: bool = False

    def _spawn_process(self) -> None:
        if not self._forkmem_fork or _in_bulk_start():
            super()._spawn_process()  # type: ignore[misc]
            return
        handle = freeze_around_fork("young")
        try:
            super()._spawn_process()  # type: ignore[misc]
        finally:
            handle.remove()


def _start_method(ctx: multiprocessing.context.BaseContext) -> str:
    method = ctx.get_start_method()
    return method if isinstance(method, str) else "fork"


def _init_worker(
    sample_memory: bool,
    initializer: Callable[..., object] | None,
    initargs: tuple[Any, ...],
) -> None:
    if sample_memory:
        sampler = Sampler().start()
        # Pool workers leave through os._exit: atexit never runs, multiprocessing's
        # finalizers (exitpriority set) do.
        multiprocessing.util.Finalize(
            sampler, sampler.stop_and_log, kwargs={"label": "pool worker"}, exitpriority=10
        )
    if initializer is not None:
        initializer(*initargs)


def _wrapped_initializer(
    sample_memory: bool,
    initializer: Callable[..., object] | None,
    initargs: Iterable[Any],
) -> tuple[Callable[..., object] | None, tuple[Any, ...]]:
    if initializer is not None and not callable(initializer):
        raise InvalidArgument(f"initializer must be callable; got {initializer!r}")
    try:
        args = tuple(initargs)
    except TypeError as exc:
        raise InvalidArgument(f"initargs must be an iterable; got {initargs!r}") from exc
    if not sample_memory:
        return initializer, args
    return functools.partial(_init_worker, sample_memory, initializer, args), ()


def fork_pool(
    processes: int | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: Iterable[Any] = (),
    maxtasksperchild: int | None = None,
    *,
    context: str | multiprocessing.context.BaseContext | None = None,
    unfreeze: bool = True,
    warmup: bool = False,
    sample_memory: bool = False,
    max_private_memory: str | int | None = None,
    max_private_memory_hard: str | int | None = None,
    recycle_measure: str = "uss",
    recycle_samples: int = 2,
) -> multiprocessing.pool.Pool:
    """A `multiprocessing.pool.Pool` whose workers start from a frozen parent heap.

    Unlike the stdlib pool it survives killed workers: a worker that dies (``SIGKILL``, the OOM
    killer) fails the task it had started with `WorkerLost` and is replaced;
    ``close()``/``join()``/``terminate()`` always return.

    Takes `multiprocessing.pool.Pool`'s arguments, plus:

    - ``context``: a start method name (``"fork"``, ``"forkserver"``, ``"spawn"``) or a
      multiprocessing context; ``None`` is ``"fork"`` where the platform has it (also on 3.14,
      whose stdlib default is ``"forkserver"``; ``multiprocessing.set_start_method()`` is not
      consulted), else multiprocessing's default.
    - ``unfreeze``: under ``"fork"``, unfreeze the parent once its workers have started (the
      default, LocalExecutor's pattern: the parent's own garbage stays collectable). ``False``
      keeps the parent heap frozen, for parents that will fork again.
    - ``warmup``: run [`forkmem.warmup()`][forkmem.warm.warmup] instead of a plain
      collect-and-freeze (in the parent under ``"fork"``, in the fork server under
      ``"forkserver"``).
    - ``sample_memory``: each worker samples its own peak USS and private dirty memory (at most
      1% of one CPU) and logs it on the ``"forkmem"`` logger when it exits.
    - ``max_private_memory``: recycle by memory (see `forkmem.recycle`). A worker whose
      ``recycle_measure`` (USS by default) stays above this size (``"200 MiB"`` or bytes) for
      ``recycle_samples`` consecutive samples is replaced after its current task; no result is
      lost. ``max_private_memory_hard`` ends a worker at once (its task fails with
      [`WorkerLost`][forkmem.WorkerLost]). Recycles are counted in
      [`forkmem.recycle_stats()`][forkmem.recycle.recycle_stats].

    Under ``"forkserver"`` the freeze runs inside the fork server after its own preloads (put
    the modules your workers share in `multiprocessing.set_forkserver_preload()` *before*
    calling this). Under ``"spawn"`` nothing can be shared: a
    [`ForkmemWarning`][forkmem.ForkmemWarning] is issued and an ordinary pool returned. With
    ``FORKMEM_DISABLE=1`` in the environment it returns the stdlib pool itself, for A/B runs.
    """
    _check_count("processes", processes)
    _check_count("maxtasksperchild", maxtasksperchild)
    _check_flags(unfreeze=unfreeze, warmup=warmup, sample_memory=sample_memory)
    policy = RecyclePolicy.build(
        max_private_memory,
        max_private_memory_hard,
        measure=recycle_measure,
        samples=recycle_samples,
        where="fork_pool()",
    )
    ctx = _resolve_context(context)
    if disabled("pool"):  # FORKMEM_DISABLE=1: the stdlib pool, for A/B comparisons
        return ctx.Pool(processes, initializer, tuple(initargs), maxtasksperchild)
    # With a policy, one sampler per worker serves both the policy and sample_memory's log.
    init, args = _wrapped_initializer(sample_memory and policy is None, initializer, initargs)
    options: dict[str, Any] = {}
    if policy is not None:
        options["worker_setup"] = functools.partial(recycling_setup, policy, 0.01, sample_memory)
        options["on_recycle"] = count_recycle
    method = _start_method(ctx)
    if method == "spawn":
        _warn_spawn("fork_pool()")
        pool: SupervisedPool = SupervisedPool(
            processes, init, args, maxtasksperchild, context=ctx, **options
        )
    elif method == "forkserver":
        _prepare_forkserver(warmup)
        pool = _ForkmemPool(processes, init, args, maxtasksperchild, context=ctx, **options)
    else:
        with block(unfreeze=unfreeze, warmup=warmup) as report:
            _bulk.active = True
            try:
                pool = _ForkmemPool(processes, init, args, maxtasksperchild, context=ctx, **options)
            finally:
                _bulk.active = False
        _logger.debug(
            "fork_pool: %d workers started from a frozen heap (%d objects, %.3f s)",
            len(pool._pool),
            report.frozen_total,
            report.seconds,
        )
    return pool


def process_pool_executor(
    max_workers: int | None = None,
    initializer: Callable[..., object] | None = None,
    initargs: Iterable[Any] = (),
    *,
    max_tasks_per_child: int | None = None,
    context: str | multiprocessing.context.BaseContext | None = None,
    unfreeze: bool = True,
    warmup: bool = False,
    sample_memory: bool = False,
) -> ProcessPoolExecutor:
    """A `concurrent.futures.ProcessPoolExecutor` whose workers start from a frozen heap.

    The options are those of [`fork_pool()`][forkmem.pool.fork_pool]. Under ``"fork"`` every worker
    is started here, at once, inside the freeze (the stdlib would start them at the first
    ``submit()``, from whatever heap the parent has by then). Under ``"forkserver"`` the fork server
    freezes its heap after its preloads and workers start on demand, as usual.
    ``max_tasks_per_child`` needs Python 3.11+ and a start method other than ``"fork"`` (a stdlib
    rule). ``FORKMEM_DISABLE=1`` returns the stdlib executor itself.
    """
    _check_count("max_workers", max_workers)
    _check_count("max_tasks_per_child", max_tasks_per_child)
    _check_flags(unfreeze=unfreeze, warmup=warmup, sample_memory=sample_memory)
    ctx = _resolve_context(context)
    init, args = _wrapped_initializer(sample_memory, initializer, initargs)
    extra: dict[str, Any] = {}
    if max_tasks_per_child is not None:
        extra["max_tasks_per_child"] = max_tasks_per_child
    method = _start_method(ctx)
    try:
        if disabled("pool"):  # FORKMEM_DISABLE=1: the stdlib executor, for A/B comparisons
            return ProcessPoolExecutor(max_workers, ctx, initializer, tuple(initargs), **extra)
        if method == "spawn":
            _warn_spawn("process_pool_executor()")
            return ProcessPoolExecutor(max_workers, ctx, init, args, **extra)
        if method == "forkserver":
            _prepare_forkserver(warmup)
            return _ForkmemExecutor(max_workers, ctx, init, args, **extra)
        with block(unfreeze=unfreeze, warmup=warmup):
            executor = _ForkmemExecutor(max_workers, ctx, init, args, **extra)
            executor._forkmem_fork = True
            _bulk.active = True
            try:
                # Start them all now, from the frozen heap; with every slot filled the
                # executor never forks on submit().
                executor._launch_processes()  # type: ignore[attr-defined]
            finally:
                _bulk.active = False
    except TypeError as exc:
        # e.g. max_tasks_per_child on 3.10: say which argument, not a stdlib traceback.
        raise InvalidArgument(f"process_pool_executor(): {exc}") from exc
    except ValueError as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"process_pool_executor(): {exc}") from exc
    return executor
