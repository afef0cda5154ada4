"""Celery prefork pool: freeze the parent before it forks its pool, hooks and memory per child.

``install(app)`` connects Celery signals:

- ``celeryd_after_setup`` (the worker's main process, after the app is finalized and the task
  modules imported, just before the bootsteps start the pool and fork its children): a full
  collection, then ``gc.freeze()``, once; before it, what billiard's child initializer would
  otherwise build in every child (cffi's C parser, when cffi is installed).
  ``worker_before_create_process`` (sent by the prefork
  pool before each child) does the same if the first signal never came (a worker started
  without the ``celery worker`` command).
- ``worker_process_init`` (in each new child): forkmem's "after_in_child" hooks, if the fork did
  not run them already (billiard forks with ``os.fork``, so normally it did), and the memory
  sampler. Celery kills a child whose ``worker_process_init`` handlers take over 4 s: this one
  only starts a thread.
- ``worker_process_shutdown`` (in the child, when it leaves normally): log its peak private
  memory on the ``"forkmem"`` logger.

Celery is imported only when [`install()`][forkmem.integrations.celery.install] is called.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any

from forkmem._disable import disabled
from forkmem._exporter import Exporter, parse_listen
from forkmem._sampler import Sampler
from forkmem.errors import InvalidArgument
from forkmem.integrations import _celery_recycle as _recycle
from forkmem.integrations._billiard_warm import warm_pdeathsig_parser
from forkmem.integrations._common import ensure_child_hooks, start_metrics, warn_missing_bytecode
from forkmem.integrations._options import WorkerOptions
from forkmem.recycle import RecyclePolicy

__all__ = ["install"]

_logger = logging.getLogger("forkmem.celery")


_apps: weakref.WeakKeyDictionary[Any, WorkerOptions] = weakref.WeakKeyDictionary()
_connected = False
_connect_lock = threading.Lock()
# Set in the main process when it froze; a forked child inherits it (and its options).
_frozen_with: WorkerOptions | None = None
_sampler: Sampler | None = None
_exporter: Exporter | None = None


def install(
    app: Any,
    *,
    warmup: bool = False,
    immortalize: bool = False,
    sample_memory: bool = True,
    duty_cycle: float = 0.01,
    metrics: str | None = None,
    max_private_memory: str | int | None = None,
    max_private_memory_hard: str | int | None = None,
    recycle_measure: str = "uss",
    recycle_samples: int = 2,
) -> None:
    """Apply forkmem to the prefork pool of Celery ``app``'s workers. Call it where the app is made.

    ``warmup`` runs [`forkmem.warmup()`][forkmem.warm.warmup] (``immortalize`` passed on) instead of
    a plain collect-and-freeze. ``sample_memory`` samples each child's peak private memory at most
    ``duty_cycle`` of one CPU and logs it when the child exits. Calling it again for the same
    app replaces the options. With ``FORKMEM_DISABLE=1`` in the environment it does nothing.

    ``max_private_memory`` (``"200 MiB"`` or bytes) retires a child whose private memory
    (``recycle_measure``: USS by default) stays above it for ``recycle_samples`` consecutive
    samples, after its current task, the way billiard retires it for
    ``worker_max_memory_per_child``; no task is lost or run twice. ``max_private_memory_hard``
    ends a child at once (``SIGKILL``: its task fails with billiard's ``WorkerLostError``).
    See [Recycling workers by memory][forkmem.recycle.RecyclePolicy].
    """
    global _connected
    policy = RecyclePolicy.build(
        max_private_memory,
        max_private_memory_hard,
        measure=recycle_measure,
        samples=recycle_samples,
        where="install()",
    )
    options = WorkerOptions.checked(
        "install",
        warmup=warmup,
        immortalize=immortalize,
        sample_memory=sample_memory,
        duty_cycle=duty_cycle,
        recycle=policy,
        metrics=metrics,
    )
    if metrics is not None:
        parse_listen(metrics)
    try:
        from celery import Celery, signals
    except ImportError as exc:
        raise InvalidArgument(
            "forkmem.integrations.celery needs Celery (pip install 'forkmem[celery]')"
        ) from exc
    if not isinstance(app, Celery):
        raise InvalidArgument(f"install() takes a celery.Celery app; got {app!r}")
    if disabled("celery"):
        return
    _apps[app] = options
    with _connect_lock:
        if _connected:
            return
        # weak=False: the handlers are module functions, but say so; dispatch_uid: once only.
        signals.celeryd_after_setup.connect(
            _on_after_setup, weak=False, dispatch_uid="forkmem.after_setup"
        )
        signals.worker_before_create_process.connect(
            _on_before_create_process, weak=False, dispatch_uid="forkmem.before_create"
        )
        signals.worker_process_init.connect(
            _on_process_init, weak=False, dispatch_uid="forkmem.process_init"
        )
        signals.worker_process_shutdown.connect(
            _on_process_shutdown, weak=False, dispatch_uid="forkmem.process_shutdown"
        )
        _connected = True


def _freeze_once(options: WorkerOptions) -> None:
    global _frozen_with, _exporter
    if _frozen_with is not None:
        return
    from forkmem.freeze import prepare

    warn_missing_bytecode()
    # Before the freeze: with cffi installed, each child would otherwise build cffi's C parser.
    warm_pdeathsig_parser()
    report = prepare(warmup=options.warmup, immortalize=bool(options.immortalize))
    _frozen_with = options
    _logger.info(
        "forkmem: froze %d objects in the Celery main process in %.3f s before the pool forks",
        report.frozen_total,
        report.seconds,
    )
    if _exporter is None:
        _exporter = start_metrics(options.metrics, "Celery")


def _on_after_setup(sender: Any = None, instance: Any = None, **kwargs: Any) -> None:
    app = getattr(instance, "app", None)
    options = _apps.get(app) if app is not None else None
    if options is not None:
        _freeze_once(options)
        if options.recycle is not None:
            _recycle.prepare_worker(instance)


def _on_before_create_process(sender: Any = None, **kwargs: Any) -> None:
    # The pool carries no app; with exactly one installed app there is no ambiguity.
    if _frozen_with is None and len(_apps) == 1:
        _freeze_once(next(iter(_apps.values())))


def _on_process_init(sender: Any = None, **kwargs: Any) -> None:
    global _sampler
    ensure_child_hooks()
    options = _frozen_with
    if options is None:
        return
    on_sample = _recycle.watch(options.recycle) if options.recycle is not None else None
    if options.sample_memory or on_sample is not None:
        _sampler = Sampler(duty_cycle=options.duty_cycle, on_sample=on_sample).start()


def _on_process_shutdown(sender: Any = None, pid: Any = None, **kwargs: Any) -> None:
    global _sampler
    sampler, _sampler = _sampler, None
    if sampler is not None:
        sampler.stop_and_log(label="celery worker")
