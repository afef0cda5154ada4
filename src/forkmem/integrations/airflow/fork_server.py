"""Airflow's parse children forked from forkmem's fork server instead of the manager.

Airflow forks each parse child inside ``WatchedSubprocess.start()``: it makes four socket pairs,
calls ``os.fork()``, and in the child calls its child entry point with the child's ends and a
target function. While the manager creates a process, forkmem puts a stand-in for ``os.fork``
in place: called from that function, it sends the child's ends of the sockets and the target's
name to the fork server, whose worker calls the same entry point; the stand-in returns the
worker's pid, so the manager goes on exactly as after its own fork. Called from anywhere else,
or for a target it cannot name, it is the real ``os.fork``. What this reads of Airflow's
internals is in ``_private_api``.

Before each fork the server runs Airflow's own pre-import of the DAG file's Airflow modules, as
the stock manager does in itself, and warms up what those imports added, so later children
share it too.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

from forkmem import _immortal
from forkmem._fork_server import ForkServer, ForkServerError
from forkmem._holes import fill_holes
from forkmem.errors import UnsupportedPlatform, UnsupportedRuntime
from forkmem.integrations.airflow import _private_api

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import CodeType, FrameType

__all__ = ["AirflowForkServer"]

_logger = logging.getLogger("forkmem.airflow")


class _PreImportLog:
    """The logger Airflow's pre-import warns through, routed to forkmem's logger."""

    def warning(self, msg: str, *args: Any, **kwargs: Any) -> None:
        _logger.warning(msg, *args)


def _target_name(target: Any) -> str | None:
    """``module:qualname`` for a module-level function the server can look up, else None."""
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    try:
        found = _resolve(f"{module}:{qualname}")
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if found is target else None


def _resolve(name: str) -> Any:
    module, _, qualname = name.partition(":")
    obj: Any = sys.modules.get(module) or importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _warm_new_objects(immortalize: bool, hash_strings: bool) -> None:
    """Collect, then warm and freeze only what is not frozen yet (the server's new imports), and
    fill the allocators' holes those left, so the children allocate in new pages."""
    gc.collect()
    if immortalize:
        _immortal.immortalize(gc.get_objects(), hash_strings=hash_strings)
    elif hash_strings:
        _immortal.hash_reachable_strings(gc.get_objects())
    fill_holes()
    gc.freeze()


class AirflowForkServer:
    """The fork server of one dag-processor manager."""

    def __init__(
        self,
        *,
        freeze: bool,
        warmup: bool,
        immortalize: bool,
        arm_child: Callable[[], object] | None,
    ) -> None:
        self._freeze = freeze
        self._warmup = warmup
        self._immortalize = immortalize
        self._arm_child = arm_child
        self._server = ForkServer(self._run, prepare=self._prepare, on_start=self._on_start)
        self._start_code: CodeType | None = None
        self.fallbacks = 0

    @property
    def pid(self) -> int:
        """The server's pid (0 before it started)."""
        return self._server.pid

    @property
    def spawned(self) -> int:
        """Parse children the server forked."""
        return self._server.spawned

    def start(self) -> bool:
        """Start the server; False (logged) where it cannot run, and Airflow forks as usual."""
        try:
            self._start_code = _private_api.start_code()
            self._server.start()
        except (
            AttributeError,
            ImportError,
            ForkServerError,
            UnsupportedPlatform,
            UnsupportedRuntime,
        ) as exc:
            _logger.warning("forkmem: no fork server, Airflow forks parse children itself: %s", exc)
            return False
        _logger.info("forkmem: fork server pid=%d forks the parse children", self._server.pid)
        return True

    def close(self) -> None:
        self._server.close()

    @contextlib.contextmanager
    def routing(self, path: str | None) -> Iterator[None]:
        """While inside, an ``os.fork()`` from ``WatchedSubprocess.start`` forks on the server."""
        server = self._server
        if not server.alive:
            yield
            return
        real_fork = os.fork

        def fork() -> int:
            request = self._request(sys._getframe(1), path)
            if request is not None and server.alive:
                fds, payload = request
                try:
                    return server.spawn(fds, payload)
                except ForkServerError as exc:
                    self.fallbacks += 1
                    _logger.warning("forkmem: %s; Airflow forks parse children itself", exc)
            return real_fork()

        os.fork = fork
        try:
            yield
        finally:
            os.fork = real_fork

    def _request(
        self, frame: FrameType, path: str | None
    ) -> tuple[list[int], dict[str, Any]] | None:
        found = _private_api.fork_request(frame, self._start_code)
        if found is None:
            return None
        fds, target_function, new_process_group = found
        target = _target_name(target_function)
        if target is None:
            return None
        payload = {"target": target, "path": path, "new_process_group": new_process_group}
        return fds, payload

    # -- in the server ------------------------------------------------------------------------

    def _on_start(self) -> None:  # pragma: no cover - runs in the fork server
        # The manager's exit-time measurement was armed in this copy by the fork hook: the
        # server is not a parse child.
        real = getattr(os._exit, "_forkmem_real", None)
        if real is not None:
            os._exit = real
        if self._freeze:
            # What the manager built since its set-up (its loop's state) is in this copy too:
            # warm it here, where it costs the manager nothing and stays out of its heap.
            _warm_new_objects(self._immortalize, self._warmup)

    def _prepare(self, request: dict[str, Any]) -> None:  # pragma: no cover - in the server
        path = request.get("path")
        if not isinstance(path, str):
            return
        before = len(sys.modules)
        if not _private_api.pre_import(path, _PreImportLog()):
            return
        if len(sys.modules) != before and self._freeze:
            _warm_new_objects(self._immortalize, self._warmup)

    def _run(self, fds: list[int], request: dict[str, Any]) -> None:  # pragma: no cover
        import socket

        sockets = [socket.socket(fileno=fd) for fd in fds]
        if request.get("new_process_group"):
            with contextlib.suppress(OSError):
                os.setpgid(0, 0)
        if self._arm_child is not None:
            self._arm_child()
        _private_api.fork_main(sockets, _resolve(request["target"]))
