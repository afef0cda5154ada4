"""gunicorn server hooks: freeze the preloaded app, run forkmem's child hooks, log worker memory.

In ``gunicorn.conf.py``::

    from forkmem.integrations.gunicorn import *  # noqa: F403

    preload_app = True

The import defines ``when_ready``, ``pre_fork``, ``post_fork``, ``worker_exit``,
``child_exit`` and ``post_request``; gunicorn picks them up by name. Sync and gthread workers
sample their memory from ``post_request`` (no thread); a config that defines its own
``post_request`` must call forkmem's from it.

Where each hook runs (gunicorn's arbiter): the master loads the app (``preload_app``), opens the
listeners, calls [`when_ready()`][forkmem.integrations.gunicorn.when_ready], then for each worker
[`pre_fork()`][forkmem.integrations.gunicorn.pre_fork], ``os.fork()``, and in the worker
[`post_fork()`][forkmem.integrations.gunicorn.post_fork] before it starts serving. A worker that
ends runs [`worker_exit()`][forkmem.integrations.gunicorn.worker_exit]; the master reaps it and
calls [`child_exit()`][forkmem.integrations.gunicorn.child_exit] (also after a ``SIGKILL``).

This module does not import gunicorn: the hooks only use the objects gunicorn passes in.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

from forkmem._disable import disabled
from forkmem._exporter import Exporter, parse_listen
from forkmem._immortal import unsupported_reason
from forkmem._sampler import PeakSlot, Sampler, log_peak
from forkmem._validate import check_bool
from forkmem.errors import InvalidArgument
from forkmem.integrations import _gunicorn_recycle as _recycle
from forkmem.integrations._common import (
    ensure_child_hooks,
    route_logs,
    start_metrics,
    warn_missing_bytecode,
)
from forkmem.integrations._fork_safety import remember_engines
from forkmem.integrations._gunicorn_refork import Refork
from forkmem.integrations._gunicorn_rehearsal import Request, check_requests, rehearse
from forkmem.integrations._options import WorkerOptions
from forkmem.recycle import RecyclePolicy

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = ["child_exit", "post_fork", "post_request", "pre_fork", "when_ready", "worker_exit"]

_logger = logging.getLogger("forkmem.gunicorn")


# Warm-up by default; immortalize wherever the runtime supports it.
_settings = WorkerOptions(warmup=True, immortalize=None)
_rehearsal: tuple[Request, ...] = ()
_exporter: Exporter | None = None
_refork_after: int | None = None
_refork: Refork | None = None
# Rounds of the rehearsal: measured on the Django example, 32 rounds leave each worker
# ~0.4 MiB less private memory than one (the specializing interpreter's counters and caches
# settle in the master instead of being rewritten in every worker).
_REHEARSE_ROUNDS = 32
_rehearse_rounds = _REHEARSE_ROUNDS
_pack_code = True
_SAMPLERS = ("auto", "thread", "requests")
_WARM_SAMPLES = 8  # CPython 3.12+ specializes an instruction on its second run
_sampler = "auto"
# Worker classes whose request loop calls post_request after every request, named rather than
# imported (this module never imports gunicorn). The async workers call it too, but they serve
# long-lived connections (websockets, streams) whose requests may never end.
_POLLING_WORKERS = frozenset(
    {("gunicorn.workers.sync", "SyncWorker"), ("gunicorn.workers.gthread", "ThreadWorker")}
)


def configure(
    *,
    warmup: bool = True,
    immortalize: bool | None = None,
    sample_memory: bool = True,
    duty_cycle: float = 0.01,
    sampler: str = "auto",
    rehearse: Sequence[str | Mapping[str, Any]] = (),
    rehearse_rounds: int = _REHEARSE_ROUNDS,
    pack_code: bool = True,
    max_private_memory: str | int | None = None,
    max_private_memory_hard: str | int | None = None,
    recycle_measure: str = "uss",
    recycle_samples: int = 2,
    metrics: str | None = None,
    refork_after: int | None = None,
) -> None:
    """Change what the hooks do; call it in ``gunicorn.conf.py`` (the master reads the file).

    ``warmup`` (the default) runs [`forkmem.warmup()`][forkmem.warm.warmup] in
    [`when_ready()`][forkmem.integrations.gunicorn.when_ready]; ``False`` is a plain
    collect-and-freeze. ``immortalize`` is passed on to it: ``None`` (the default) means wherever
    the runtime supports it (CPython 3.12/3.13), with one log line where it does not. ``rehearse``
    lists requests the master serves itself, through gunicorn's own request path and the preloaded
    app, before the warm-up: paths (``"/"``, ``"/admin/login/?next=/"``) or environ-style dicts
    (``REQUEST_METHOD``, ``PATH_INFO``, ``QUERY_STRING``, ``CONTENT_TYPE``, ``HTTP_*``). What the
    app builds on its first requests is then built once and shared by every worker; database
    connections and sockets it opened are closed, and threads it left running raise
    [`UnsafeToFork`][forkmem.UnsafeToFork] (see ``docs/integrations/gunicorn.md``).
    ``rehearse_rounds`` (32) is how many times the list is served: the bytecode the requests run
    is specialized and its counters settle in the master, not in each worker; ``1`` serves each
    request once. ``pack_code`` (on by default, with two rounds or more): the second round records
    which code objects the requests run, and those are copied next to each other into fresh
    memory (functions repointed) before the later rounds specialize them, so each worker's
    bytecode-counter writes land on a few dense pages instead of one page per function
    (`forkmem` docs: "Code packing"); ``False`` leaves code where the imports put it.
    ``sample_memory`` samples each worker's peak private memory at most ``duty_cycle`` of one CPU,
    logged at [`child_exit()`][forkmem.integrations.gunicorn.child_exit]. ``sampler="auto"`` (the
    default) samples sync and gthread workers from
    [`post_request()`][forkmem.integrations.gunicorn.post_request], without a thread (a clock read
    per request, a sample once the duty cycle's pause is over, a last one in
    [`worker_exit()`][forkmem.integrations.gunicorn.worker_exit]); other worker classes, a
    config whose ``post_request`` is not forkmem's own function, and any worker under
    ``max_private_memory_hard`` sample in a thread. ``sampler="thread"`` always uses a thread,
    which also sees memory in the middle of a request; ``sampler="requests"`` never does (your
    own ``post_request`` calls forkmem's, or your worker class's requests all end; not with
    ``max_private_memory_hard``).

    ``max_private_memory`` (``"200 MiB"`` or bytes) recycles a worker whose private memory
    (``recycle_measure``: USS by default) stays above it for ``recycle_samples`` consecutive
    samples: it finishes its current request and exits, and the arbiter forks a replacement.
    ``max_private_memory_hard`` ends a worker at once (``SIGKILL``), also in the middle of a
    request (its workers sample in a thread). See `forkmem.recycle`.
    ``metrics="127.0.0.1:9464"`` serves Prometheus metrics for the master and its workers
    there (the ``metrics`` extra), from a ``forkmem export`` process the master starts in
    [`when_ready()`][forkmem.integrations.gunicorn.when_ready].

    ``refork_after=N``: the first worker to serve N requests becomes the *mold*: it stops taking
    requests, warms what it built (a collection, immortalization where supported,
    ``malloc_trim``, filling the allocators' holes, ``gc.freeze()``) and forks every later
    worker; the master replaces the others one at a time, gracefully. With ``pack_code``, where
    the master's objects are immortal (CPython 3.12+) and no rehearsal packed code already, the
    worker claims the mold token 16 requests early and packs the code its requests ran, so its
    last requests specialize the copies. sync and gthread workers only (an `InvalidArgument` at
    start-up otherwise), Linux only.
    """
    policy = RecyclePolicy.build(
        max_private_memory,
        max_private_memory_hard,
        measure=recycle_measure,
        samples=recycle_samples,
        where="configure()",
    )
    global _settings, _rehearsal
    settings = WorkerOptions.checked(
        "configure",
        warmup=warmup,
        immortalize=immortalize,
        sample_memory=sample_memory,
        duty_cycle=duty_cycle,
        recycle=policy,
        metrics=metrics,
        immortalize_auto=True,
    )
    requests = check_requests("configure(rehearse)", rehearse)
    if refork_after is not None and (
        isinstance(refork_after, bool) or not isinstance(refork_after, int) or refork_after < 1
    ):
        raise InvalidArgument(
            f"configure(refork_after=...) must be a positive number of requests or None; "
            f"got {refork_after!r}"
        )
    if (
        isinstance(rehearse_rounds, bool)
        or not isinstance(rehearse_rounds, int)
        or not (1 <= rehearse_rounds <= 1000)
    ):
        raise InvalidArgument(
            f"configure(rehearse_rounds=...) must be a number of rounds from 1 to 1000; "
            f"got {rehearse_rounds!r}"
        )
    check_bool("configure(pack_code=...)", pack_code)
    if sampler not in _SAMPLERS:
        raise InvalidArgument(
            f"configure(sampler=...) must be one of {', '.join(map(repr, _SAMPLERS))}; "
            f"got {sampler!r}"
        )
    if sampler == "requests" and policy is not None and policy.max_private_memory_hard:
        raise InvalidArgument(
            "configure(sampler='requests') cannot enforce max_private_memory_hard: the hard "
            "limit must end a worker in the middle of a request, which needs the thread"
        )
    if metrics is not None:
        parse_listen(metrics)
    global _refork_after, _rehearse_rounds, _pack_code, _sampler
    _settings, _rehearsal, _refork_after = settings, requests, refork_after
    _rehearse_rounds, _pack_code, _sampler = rehearse_rounds, pack_code, sampler


def _immortalize() -> bool:
    if not _settings.warmup or _settings.immortalize is False:
        return False
    if _settings.immortalize is None:
        reason = unsupported_reason()
        if reason is not None:
            _logger.info("forkmem: not immortalizing the gunicorn master: %s", reason)
            return False
    return True


def _rehearse(server: Any) -> bool:
    """Rehearse in the master; whether it packed code."""
    app = getattr(server, "app", None)
    cfg = getattr(server, "cfg", None)
    if app is None or not getattr(cfg, "preload_app", False):
        _logger.warning("forkmem: rehearse needs preload_app = True; not rehearsing")
        return False
    report = rehearse(server, _rehearsal, rounds=_rehearse_rounds, pack_code=_pack_code)
    _logger.info(
        "forkmem: rehearsed %d request(s) x %d round(s) in the gunicorn master in %.3f s "
        "(%d failed)%s%s",
        len(_rehearsal),
        _rehearse_rounds,
        report.seconds,
        report.failed,
        "; closed " + ", ".join(report.settled.databases_closed)
        if report.settled.databases_closed
        else "",
        "; " + report.packed.describe() if report.packed is not None else "",
    )
    return report.packed is not None


def _rehearse_sampling() -> None:
    """A few samples in the master before the freeze, through the path a worker's samples take:
    that code's bytecode is specialized (and what it builds on first use is built) once, here,
    instead of in every worker's copy of those pages."""
    slot = PeakSlot()
    try:
        sampler = Sampler(slot=slot, min_interval=0.0, duty_cycle=1.0).start(thread=False)
        for _ in range(_WARM_SAMPLES):
            sampler.poll()
        sampler.stop()
    finally:
        slot.close()


def when_ready(server: Any) -> None:
    """Master, after the app is preloaded and before the first worker forks: collect and freeze.

    Every worker then inherits the app's objects in the permanent generation, so its own
    collections never touch (and copy) them. Without ``preload_app`` each worker imports the app
    itself and nothing of it can be shared: a warning says so.
    """
    from forkmem.freeze import prepare

    route_logs(getattr(getattr(server, "log", None), "error_log", None) or logging.getLogger())
    if disabled("gunicorn"):
        return
    cfg = getattr(server, "cfg", None)
    if cfg is not None and not getattr(cfg, "preload_app", False):
        _logger.warning(
            "forkmem: preload_app is off, so every worker imports the app itself and nothing of "
            "it can be shared; set preload_app = True"
        )
    packed = _rehearse(server) if _rehearsal else False
    if _settings.sample_memory or _settings.recycle is not None:
        _rehearse_sampling()
    warn_missing_bytecode()
    if _refork_after is not None:
        remember_engines()  # the mold closes them after the freeze hides them from gc
    immortal = _immortalize()
    report = prepare(warmup=_settings.warmup, immortalize=immortal)
    _logger.info(
        "forkmem: froze %d objects in the gunicorn master (pid %s) in %.3f s before forking",
        report.frozen_total,
        getattr(server, "pid", "?"),
        report.seconds,
    )
    global _exporter
    if _exporter is None:
        _exporter = start_metrics(_settings.metrics, "gunicorn")
    if _refork_after is not None:
        _install_refork(server, master_immortal=immortal, rehearsal_packed=packed)


def _install_refork(server: Any, *, master_immortal: bool, rehearsal_packed: bool) -> None:
    global _refork
    if not sys.platform.startswith("linux"):
        _logger.warning("forkmem: refork_after needs Linux (PR_SET_CHILD_SUBREAPER); not reforking")
        return
    assert _refork_after is not None
    # The mold finds the functions to repoint among the master's objects; where those are
    # mortal, that walk would write every one's reference count and copy the master's heap.
    # After a rehearsal that packed, the request path's code is packed and specialized
    # already: measured, the mold packing what is left saved nothing more.
    pack_code = _pack_code and master_immortal and not rehearsal_packed
    if _pack_code and not master_immortal:
        _logger.info(
            "forkmem: the mold will not pack code: the master's objects are not immortal, and "
            "finding the functions among them would write each one's reference count"
        )
    refork = Refork(_refork_after, immortalize=_settings.immortalize, pack_code=pack_code)
    refork.install(server)  # InvalidArgument for a worker class it cannot host
    _refork = refork
    _logger.info(
        "forkmem: refork on: the first worker to serve %d requests forks the others",
        _refork_after,
    )


def pre_fork(server: Any, worker: Any) -> None:
    """Master, just before a worker forks: give it a shared slot for its memory peak."""
    if disabled("gunicorn"):
        return
    if _settings.sample_memory:
        worker._forkmem_slot = PeakSlot()
    if _settings.recycle is not None:
        _recycle.arm(worker)


def _needs_thread(worker: Any, policy: RecyclePolicy | None) -> bool:
    """Whether the worker's sampler needs a thread: post_request alone cannot end a worker in
    the middle of a request (the hard limit), nor sample a worker that does not call it."""
    if _sampler != "auto":
        return _sampler == "thread"
    if policy is not None and policy.max_private_memory_hard:
        return True
    # A config's own post_request may not call forkmem's.
    if getattr(getattr(worker, "cfg", None), "post_request", None) is not post_request:
        return True
    return not any((c.__module__, c.__qualname__) in _POLLING_WORKERS for c in type(worker).__mro__)


def post_fork(server: Any, worker: Any) -> None:
    """Worker, just after the fork: forkmem's child hooks (once), then the memory sampler.

    Sync and gthread workers take their first sample here and the next ones in
    [`post_request()`][forkmem.integrations.gunicorn.post_request]; other workers, and any
    under a hard memory limit, sample in a thread (see ``configure(sampler=...)``).
    """
    if disabled("gunicorn"):
        return
    ensure_child_hooks()
    if _refork is not None:
        _refork.post_fork()
    slot = getattr(worker, "_forkmem_slot", None)
    policy = _settings.recycle
    on_sample = _recycle.watch(worker, policy) if policy is not None else None
    if (_settings.sample_memory and slot is not None) or on_sample is not None:
        worker._forkmem_sampler = Sampler(
            slot=slot, duty_cycle=_settings.duty_cycle, on_sample=on_sample
        ).start(thread=_needs_thread(worker, policy))


def worker_exit(server: Any, worker: Any) -> None:
    """Worker, on its way out: one last sample, so the master sees the final peak."""
    sampler = getattr(worker, "_forkmem_sampler", None)
    if sampler is not None:
        sampler.stop()
    if _refork is not None:
        _refork.worker_exit(worker)  # the mold does not return from here


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    """Worker, after each request: the memory sample, when its pause is over (sync and gthread
    workers, which sample without a thread); with ``refork_after``, count towards becoming the
    mold."""
    sampler = getattr(worker, "_forkmem_sampler", None)
    if sampler is not None:
        sampler.poll()  # a clock read; nothing while a sampling thread runs
    if _refork is not None:
        _refork.post_request(worker)


def child_exit(server: Any, worker: Any) -> None:
    """Master, after reaping a worker (however it ended): log the worker's peak private memory.

    A worker that memory recycling ended is counted in
    [`forkmem.recycle_stats()`][forkmem.recycle.recycle_stats].
    """
    _recycle.collect(worker)
    slot = getattr(worker, "_forkmem_slot", None)
    if slot is None:
        return
    try:
        log_peak(slot.read(), label="gunicorn worker", pid=getattr(worker, "pid", None))
    finally:
        slot.close()
