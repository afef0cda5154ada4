"""Refork: a gunicorn worker warmed by real requests becomes the mold that forks every later
worker (private).

A worker that has served ``after`` requests holds, in pages it wrote itself, everything the app
builds lazily: caches, compiled templates, specialized bytecode, the allocator's refilled
holes. Workers forked from the master build all of that again, each its own copy; workers forked
from that worker share it. So the first worker to get there claims the one token, stops taking
requests, warms what it built (a young collection, immortalization where supported, packing
the code its last requests ran, ``malloc_trim``, filling the allocators' holes, ``gc.freeze()``)
and becomes a
`forkmem._fork_server.ForkServer`. The master adopts it, takes it out of its worker table, and
from then on every worker it spawns is forked by the mold; it replaces its own workers one at a
time (one extra worker from the mold, then gunicorn retires the oldest, gracefully, as for a
TTOU).

Mold-forked workers are the master's own children (it is a child subreaper while it asks for
one), in its worker table with their heartbeat file (passed to them over the socket), so
signals, timeouts, ``max_requests`` and reaping work as for any worker. If the mold dies, the
master forks workers itself again and says so; there is one mold per master. If the worker that
claimed the token dies before it becomes the mold (a timeout's SIGKILL, the OOM killer, a crash),
the master issues the token again and says so: the next worker to get there claims it.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, NoReturn

from forkmem._code_pack import CodeRecorder, pack
from forkmem._fork_server import ForkServer, ForkServerError
from forkmem._holes import fill_holes
from forkmem._immortal import immortalize, unsupported_reason
from forkmem._malloc import malloc_trim
from forkmem.errors import InvalidArgument
from forkmem.integrations._fork_safety import close_databases
from forkmem.integrations._gunicorn_mold_token import MoldToken

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["Refork", "check_worker_class"]

_logger = logging.getLogger("forkmem.gunicorn")

_THREADS_GRACE = 5.0  # gthread: the pool's threads finish their requests, then end
# With pack_code, a worker records the code its requests run from 2 x this many requests
# before ``after`` (sys.monitoring disables each location after its first event, so only the
# first run of each function costs anything); the first to get to this many before ``after``
# claims the mold token, packs what it recorded, and serves this many requests more on the
# copies, which specializes them as a rehearsal's later rounds do.
_RECORD_REQUESTS = 16


def check_worker_class(worker_class: type) -> None:
    """Refork hosts the sync and gthread workers; any other class is an InvalidArgument."""
    from gunicorn.workers.gthread import ThreadWorker
    from gunicorn.workers.sync import SyncWorker

    if not issubclass(worker_class, (SyncWorker, ThreadWorker)):
        raise InvalidArgument(
            f"configure(refork_after=...) supports the sync and gthread worker classes, not "
            f"{worker_class.__module__}.{worker_class.__qualname__}: an event loop's worker "
            "cannot be forked mid-flight"
        )


class _Heartbeat:
    """The worker's end of the heartbeat file the master made for it (gunicorn's WorkerTmp
    interface: the master checks the file's mtime, the worker touches it)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def notify(self) -> None:
        now = time.monotonic()
        os.utime(self._fd, (now, now))

    def last_update(self) -> float:
        return os.fstat(self._fd).st_mtime

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


class Refork:
    """The master's and the workers' side of refork for one arbiter."""

    def __init__(self, after: int, *, immortalize: bool | None, pack_code: bool = False) -> None:
        self.after = after
        self.immortalize = immortalize
        self.pack_code = pack_code
        self._recorder: CodeRecorder | None = None
        self._recorded = False  # once per worker: a second recording would never be used
        self._codes: dict[int, Any] = {}  # what the stopped recorder saw
        self._mold_at = 0  # the claimant's request count at which it becomes the mold
        self._packed = ""
        self._recording = threading.Lock()  # gthread: post_request runs in the pool's threads
        self.server = ForkServer(self._boot, timeout=10.0)
        self.arbiter: Any = None
        self.master_pid = 0
        self.mold_pid = 0
        self.token = MoldToken()
        self._spawn_plain: Callable[[], Any] | None = None
        self._manage_plain: Callable[[], Any] | None = None
        self._old: set[int] = set()
        self._adopted = False  # master: a mold came; if it dies, no second one

    # -- master ------------------------------------------------------------------------------

    def install(self, arbiter: Any) -> None:
        """In the master, before the first fork: the token, the channels, the arbiter's spawn
        and manage steps."""
        check_worker_class(arbiter.worker_class)
        self.server.open()
        self.token.open()
        self.arbiter = arbiter
        self.master_pid = os.getpid()
        self._spawn_plain = arbiter.spawn_worker
        self._manage_plain = arbiter.manage_workers
        # Instance attributes: gunicorn's own loop calls self.spawn_worker()/manage_workers().
        arbiter.spawn_worker = self._spawn
        arbiter.manage_workers = self._manage

    def _mold_alive(self) -> bool:
        if not self.mold_pid or not self.server.alive:
            return False
        import psutil

        try:
            return psutil.Process(self.mold_pid).status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return False

    def _mold_gone(self, why: str) -> None:
        _logger.warning(
            "forkmem: the mold (pid %d) is gone (%s); the master forks workers itself again",
            self.mold_pid,
            why,
        )
        self.mold_pid = 0
        self._old.clear()
        self.server.close(timeout=0)

    def _spawn(self) -> Any:
        assert self._spawn_plain is not None
        if not self.mold_pid:
            return self._spawn_plain()
        if not self._mold_alive():
            self._mold_gone("it exited")
            return self._spawn_plain()
        arbiter = self.arbiter
        arbiter.worker_age += 1
        worker = arbiter.worker_class(
            arbiter.worker_age,
            arbiter.pid,
            arbiter.LISTENERS,
            arbiter.app,
            arbiter.timeout / 2.0,
            arbiter.cfg,
            arbiter.log,
        )
        arbiter.cfg.pre_fork(arbiter, worker)
        # The memory slot forkmem's pre_fork made lives in the master's memory only: a worker
        # forked by the mold cannot write to it.
        slot = getattr(worker, "_forkmem_slot", None)
        if slot is not None:
            slot.close()
            del worker._forkmem_slot
        try:
            # The listeners travel with the heartbeat file: a gthread worker closes its own on
            # the way out, so the mold may have none left.
            fds = [worker.tmp.fileno(), *(listener.fileno() for listener in arbiter.LISTENERS)]
            pid = self.server.spawn(fds, {"age": worker.age})
        except ForkServerError as exc:
            worker.tmp.close()
            self._mold_gone(str(exc))
            return self._spawn_plain()
        worker.pid = pid
        arbiter.WORKERS[pid] = worker
        stats = getattr(arbiter, "_stats", None)
        if isinstance(stats, dict) and "workers_spawned" in stats:
            stats["workers_spawned"] += 1
        return pid

    def _adopt(self, pid: int) -> None:
        self._adopted = True
        worker = self.arbiter.WORKERS.pop(pid, None)
        if worker is not None:
            worker.tmp.close()
            slot = getattr(worker, "_forkmem_slot", None)
            if slot is not None:
                slot.close()
        self.server.adopt(pid)
        self.mold_pid = pid
        self._old = set(self.arbiter.WORKERS)
        _logger.info(
            "forkmem: worker pid %d is the mold now; its %d siblings are replaced by workers it "
            "forks, one at a time",
            pid,
            len(self._old),
        )

    def _manage(self) -> None:
        assert self._manage_plain is not None
        if not self._adopted and self.token.open_here:
            mold = self.token.mold_announced()
            if mold:
                self._adopt(mold)
            else:
                self.token.reissue_if_lost(self.arbiter.WORKERS)
        self._manage_plain()
        if not self.mold_pid:
            return
        arbiter = self.arbiter
        self._old &= set(arbiter.WORKERS)
        # One extra worker from the mold; gunicorn's next pass retires the oldest (an old one),
        # gracefully. Only once the previous one is gone, so capacity never drops.
        if self._old and len(arbiter.WORKERS) <= arbiter.num_workers:
            self._spawn()

    # -- workers -----------------------------------------------------------------------------

    def post_fork(self) -> None:
        """In a worker the master forked: it may become the mold, never the master's reader."""
        self.server.close_client_end()
        self.token.forked()

    def post_request(self, worker: Any) -> None:
        """In a worker, after each request: the first to reach ``after`` claims the token and
        stops taking requests; its ``worker_exit`` then makes it the mold. With ``pack_code``,
        workers record the code their requests run, and the first to get within
        ``_RECORD_REQUESTS`` of ``after`` claims the token early, packs it, and becomes the mold
        that many requests later (see above). A token the master issues again (its claimant
        died) goes the same way to the next worker that gets there."""
        if getattr(worker, "_forkmem_mold", False) or not self.token.open_here:
            return
        if os.getppid() != self.master_pid:
            return
        if getattr(worker, "_forkmem_claimed", False):
            if worker.nr >= self._mold_at:
                worker._forkmem_mold = True
                worker.alive = False
            return
        last = min(_RECORD_REQUESTS, self.after // 2)  # a small ``after`` still records some
        claim_at = self.after - last if self.pack_code else self.after
        if worker.nr < claim_at:
            if self.pack_code and worker.nr >= claim_at - last:
                self._start_recording(worker)
            return
        claimed = self.token.claim()
        self._stop_recording()
        if not claimed:
            return
        _logger.info(
            "forkmem: worker pid %d claimed the mold token after %d requests",
            os.getpid(),
            worker.nr,
        )
        if self.pack_code:
            # What it recorded before it first tried to claim (kept when another worker won):
            # pack it, then specialize the copies over ``last`` more requests.
            self._mold_at = worker.nr + last  # first: gthread's other threads read both
            worker._forkmem_claimed = True
            self._packed = self._pack(self._codes)
            self._codes = {}
        else:
            worker._forkmem_mold = True
            worker.alive = False

    def _start_recording(self, worker: Any) -> None:
        with self._recording:
            if self._recorder is not None or self._recorded:
                return
            if self._between_requests(worker):
                # The mold closes its database connections before it forks, so each of its
                # workers connects on its first request: have this worker's next request
                # connect too, while recording, so that the connect path is packed as well.
                close_databases()
            recorder = self._recorder = CodeRecorder().__enter__()
        if recorder.reason is not None:
            _logger.info(
                "forkmem: worker pid %d cannot record the code its requests run (%s); a mold "
                "it becomes will not pack code",
                os.getpid(),
                recorder.reason,
            )

    @staticmethod
    def _between_requests(worker: Any) -> bool:
        """Whether no other request runs in ``worker`` now: a sync worker's ``post_request``
        (a gthread worker's other threads may be using a connection or an ORM session)."""
        from gunicorn.workers.sync import SyncWorker

        return isinstance(worker, SyncWorker)

    def _stop_recording(self) -> None:
        # Under the lock, and kept: with gthread, the thread that claims the token may come
        # here after another one stopped the recorder.
        with self._recording:
            recorder, self._recorder = self._recorder, None
            if recorder is not None:
                if recorder.reason is None:
                    recorder.__exit__(None, None, None)
                self._codes = recorder.codes
            self._recorded = True

    def worker_exit(self, worker: Any) -> None:
        """In a worker on its way out: the one that claimed the token becomes the mold here,
        and never returns (also when it leaves before ``after``, for ``max_requests`` or a
        graceful stop, after claiming it early)."""
        self._stop_recording()
        if getattr(worker, "_forkmem_mold", False) or getattr(worker, "_forkmem_claimed", False):
            self._become_mold(worker)

    def _become_mold(self, worker: Any) -> None:
        deadline = time.monotonic() + _THREADS_GRACE
        while threading.active_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        if threading.active_count() > 1:
            names = ", ".join(t.name for t in threading.enumerate() if t.name != "MainThread")
            _logger.error(
                "forkmem: worker pid %d cannot be the mold, threads still run (%s); it exits",
                os.getpid(),
                names,
            )
            return  # the master issues the token again once this worker is gone
        close_databases()
        started = time.perf_counter()
        gc.collect()  # what the master froze stays frozen: this walks the worker's own objects
        immortal = 0
        mortal = self.immortalize is False or unsupported_reason() is not None
        if not mortal:
            if getattr(worker, "_forkmem_claimed", False):
                # The pack froze what this worker had then: list it again with the collector
                # off (the master's objects are immortal where packing runs, so listing them
                # writes nothing) and freeze at once.
                enabled = gc.isenabled()
                gc.disable()
                gc.unfreeze()
                objects = gc.get_objects()
                gc.freeze()
                if enabled:
                    gc.enable()
            else:
                objects = gc.get_objects()
            immortal = immortalize(objects).objects
            del objects
        malloc_trim()
        fill_holes()  # its workers then allocate in new pages, not in the mold's shared holes
        gc.freeze()
        self.token.announce_mold()
        self.token.close()
        _logger.info(
            "forkmem: worker pid %d served %d requests and warmed its heap in %.3f s (%d objects "
            "made immortal%s); it forks the workers from now on",
            os.getpid(),
            worker.nr,
            time.perf_counter() - started,
            immortal,
            "; " + self._packed if self._packed else "",
        )
        with contextlib.suppress(Exception):
            from gunicorn import util

            util._setproctitle(f"mold [{self.arbiter.proc_name}]")
        self.server.serve_here()

    def _pack(self, codes: dict[int, Any]) -> str:
        """In the worker that claimed the token: pack the code its requests ran, as the
        rehearsal does in the master; the log line's words, or "" when nothing was packed.

        The master's objects are frozen here and must stay untouched (a collection over them
        would copy its whole heap into the mold), so `pack()` runs with the collector off and
        freezes again at once. The copies are made immortal: on 3.12+ every call increfs its
        code object, and a mortal copy would be written by every worker.
        """
        if not codes:
            return ""
        try:
            gc.collect()  # this worker's garbage: pack() freezes what is left
            report = pack(codes.values(), refreeze=True)
            immortalize(list(report.copies))
        except Exception:  # the mold still serves, with its code where it was
            _logger.warning("forkmem: the mold could not pack its code", exc_info=True)
            return ""
        return report.describe()

    def _boot(self, fds: list[int], request: dict[str, Any]) -> NoReturn:
        """In a worker the mold forked: what gunicorn's arbiter does in a child it forked."""
        from gunicorn import sock, util
        from gunicorn.errors import AppImportError

        # Not a mold candidate: a second mold would fork from a copy of the first.
        self.token.close()
        arbiter = self.arbiter
        arbiter.LISTENERS = (
            sock.create_sockets(arbiter.cfg, arbiter.log, fds[1:]) if fds[1:] else []
        )
        worker = arbiter.worker_class(
            request["age"],
            self.master_pid,
            arbiter.LISTENERS,
            arbiter.app,
            arbiter.timeout / 2.0,
            arbiter.cfg,
            arbiter.log,
        )
        worker.tmp.close()  # the master watches the file it made and passed over
        worker.tmp = _Heartbeat(fds[0])
        worker.pid = os.getpid()
        code = 0
        try:
            util._setproctitle(f"worker [{arbiter.proc_name}]")
            arbiter.log.info("Booting worker with pid: %s (forked by the mold)", worker.pid)
            if arbiter.cfg.reuse_port and hasattr(socket, "SO_REUSEPORT"):
                worker.sockets = sock.create_sockets(arbiter.cfg, arbiter.log)
            arbiter.cfg.post_fork(arbiter, worker)
            worker.init_process()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except AppImportError as exc:
            print(exc, file=sys.stderr)
            code = arbiter.APP_LOAD_ERROR
        except Exception as exc:
            arbiter.log.exception("Exception in worker process")
            print(exc, file=sys.stderr)
            code = arbiter.WORKER_BOOT_ERROR if not worker.booted else 255
        finally:
            arbiter.log.info("Worker exiting (pid: %s)", worker.pid)
            try:
                worker.tmp.close()
                arbiter.cfg.worker_exit(arbiter, worker)
            except Exception:
                arbiter.log.warning("Exception during worker exit", exc_info=True)
        # The fork server turns anything that leaves this function into status 124: exit
        # here with gunicorn's status, after flushing what the worker logged.
        with contextlib.suppress(Exception):
            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
