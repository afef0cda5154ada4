"""Leave nothing behind that cannot cross a fork after running app code in a parent (private).

A rehearsal runs real requests (or tasks) in the process that will fork the workers, so that the
caches they fill are built once and shared. What else they leave behind must not reach the
workers: a database connection shared by several processes corrupts its protocol stream, a
socket one worker closes is closed under the others, and a thread does not exist in a child at
all while the locks it held stay locked there. `snapshot()` records the state before the
rehearsal, `settle()` puts it back afterwards or refuses.

Database libraries are handled only if the app already imported them: forkmem never imports
one to look.
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
import weakref
from dataclasses import dataclass
from typing import Any

from forkmem.errors import UnsafeToFork

__all__ = ["Settled", "Snapshot", "close_databases", "remember_engines", "settle", "snapshot"]

_logger = logging.getLogger("forkmem.rehearsal")

# How long a thread the rehearsal started may take to finish on its own (a request that
# spawned a short-lived helper) before the rehearsal refuses.
_THREAD_GRACE = 2.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Threads and file descriptors of this process at one moment."""

    threads: frozenset[int]
    fds: frozenset[int]


@dataclass(frozen=True, slots=True)
class Settled:
    """What `settle()` undid."""

    databases_closed: tuple[str, ...] = ()
    sockets_closed: int = 0
    sockets_dropped: int = 0


def _task_ids() -> frozenset[int]:
    # /proc/self/task sees threads started from C too (a driver's I/O thread); elsewhere, the
    # threading module's view is the best there is.
    try:
        return frozenset(int(t) for t in os.listdir("/proc/self/task"))
    except OSError:
        return frozenset(t.ident for t in threading.enumerate() if t.ident is not None)


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _fds() -> frozenset[int]:
    for folder in ("/proc/self/fd", "/dev/fd"):
        with contextlib.suppress(OSError):
            # The listing's own descriptor is in the list, and closed by now.
            return frozenset(fd for fd in map(int, os.listdir(folder)) if _open(fd))
    return frozenset()


def _is_socket(fd: int) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    except OSError:
        return False


def snapshot() -> Snapshot:
    """Record this process's threads and open descriptors."""
    return Snapshot(threads=_task_ids(), fds=_fds())


# SQLAlchemy engines seen before a gc.freeze(): a frozen object is no longer in
# gc.get_objects(), so a process forked after the freeze (the refork mold) could not find the
# engines the app made at import time, and would hand their pooled connections to its workers.
_known_engines: weakref.WeakSet[Any] = weakref.WeakSet()


def _engines() -> list[Any]:
    engine_type = getattr(sys.modules.get("sqlalchemy.engine"), "Engine", None)
    if not isinstance(engine_type, type):
        return []
    found = {id(e): e for e in _known_engines}
    found.update((id(obj), obj) for obj in gc.get_objects() if isinstance(obj, engine_type))
    return list(found.values())


def remember_engines() -> int:
    """Record the SQLAlchemy engines alive now (call it before ``gc.freeze()``), so that
    `close_databases()` still finds them after the freeze; how many are known."""
    _known_engines.update(_engines())
    return len(_known_engines)


def close_databases() -> list[str]:
    """Close Django's connections, SQLAlchemy's ORM sessions and engines (``dispose()``), if the
    app imported them; the names of what was closed. Engines are those the collector tracks
    (not frozen) and those `remember_engines()` recorded."""
    closed: list[str] = []
    django_db = sys.modules.get("django.db")
    connections = getattr(django_db, "connections", None)
    if connections is not None:
        try:
            connections.close_all()
            closed.append("django")
        except Exception:
            _logger.warning("forkmem: closing Django's connections failed", exc_info=True)
    # A session still in a transaction holds its connection checked out, and dispose() leaves
    # checked-out connections open: close the ORM's sessions first (their objects are detached,
    # the sessions stay usable).
    close_sessions = getattr(sys.modules.get("sqlalchemy.orm"), "close_all_sessions", None)
    if callable(close_sessions):
        try:
            close_sessions()
        except Exception:
            _logger.warning("forkmem: closing SQLAlchemy's sessions failed", exc_info=True)
    engines = _engines()
    for engine in engines:
        try:
            engine.dispose()
        except Exception:
            _logger.warning("forkmem: disposing %r failed", engine, exc_info=True)
    if engines:
        closed.append(f"sqlalchemy ({len(engines)} engine(s))")
    del engines
    return closed


def _new_threads(before: Snapshot) -> list[str]:
    deadline = time.monotonic() + _THREAD_GRACE
    while True:
        new = _task_ids() - before.threads
        if not new or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if not new:
        return []
    by_id = {t.native_id: t for t in threading.enumerate()}
    names = []
    for tid in sorted(new):
        thread = by_id.get(tid)
        names.append(f"{thread.name!r} (tid {tid})" if thread is not None else f"tid {tid}")
    return names


def _drop_sockets(before: Snapshot) -> tuple[int, int]:
    new = {fd for fd in _fds() - before.fds if _is_socket(fd)}
    if not new:
        return 0, 0
    closed = 0
    # Close through the owning socket objects, so that nothing later closes a reused number.
    for obj in gc.get_objects():
        if isinstance(obj, socket.socket):
            with contextlib.suppress(OSError, ValueError):
                if obj.fileno() in new:
                    new.discard(obj.fileno())
                    obj.close()
                    closed += 1
    # What no Python object owns (a C driver's connection): point the number at /dev/null. The
    # connection is gone, the owner's later close() is harmless, and no worker inherits it.
    dropped = 0
    if new:
        null = os.open(os.devnull, os.O_RDWR)
        try:
            for fd in new:
                with contextlib.suppress(OSError):
                    os.dup2(null, fd, inheritable=False)
                    dropped += 1
        finally:
            os.close(null)
    return closed, dropped


def settle(before: Snapshot, *, what: str) -> Settled:
    """Undo what running app code since ``before`` left that cannot cross a fork.

    Closes Django's database connections and disposes SQLAlchemy engines (if the app imported
    them), then closes every socket opened since ``before``. Raises `UnsafeToFork`
    (naming them) if threads started since ``before`` are still running after a short grace:
    forking now could leave a lock they hold locked forever in every worker.
    """
    databases = close_databases()
    threads = _new_threads(before)
    if threads:
        raise UnsafeToFork(
            f"{what} started thread(s) that are still running: {', '.join(threads)}; a forked "
            "worker would inherit any lock they hold, locked forever. Remove the request that "
            "starts them from the rehearsal, or start the thread after the fork (post_fork)"
        )
    closed, dropped = _drop_sockets(before)
    if dropped:
        _logger.warning(
            "forkmem: %s left %d socket(s) no Python object owns; dropped them so no worker "
            "inherits them",
            what,
            dropped,
        )
    return Settled(
        databases_closed=tuple(databases), sockets_closed=closed, sockets_dropped=dropped
    )
