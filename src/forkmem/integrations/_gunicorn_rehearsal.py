"""Serve requests in the gunicorn master, through gunicorn's own request path, before the fork
(private).

A web app builds much of its state on its first requests: the URL resolver, template loaders
and compiled templates, translations, specialized bytecode; gunicorn's HTTP parser and response
writer run their code for the first time too. Built in each worker, each keeps a private copy;
built once in the master before the fork, every worker shares it.

Each request is real HTTP: written to a private listening socket on 127.0.0.1 (not the server's
listeners, which another master may share during an upgrade), accepted, parsed and answered by a
sync worker object exactly as a worker would (gunicorn builds its worker objects in the master
too, before forking them), then read back for its status.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from forkmem._code_pack import CodeRecorder, PackReport, pack
from forkmem.errors import InvalidArgument
from forkmem.integrations._fork_safety import Settled, close_databases, settle, snapshot

__all__ = ["RehearsalReport", "check_requests", "rehearse"]

_logger = logging.getLogger("forkmem.rehearsal")

Request = str | Mapping[str, str]

# Environ keys a rehearsal request may set; the rest of the environ is gunicorn's to build.
_KEYS = frozenset({"REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "CONTENT_TYPE"})
_TIMEOUT = 30.0  # per request: a rehearsal must never hang the master
# Rounds after the recorded one that start without database connections too: CPython 3.12+
# specializes an instruction on its second run, so two more runs of the packed connect path
# leave it specialized in the master (one connect each, not one per round: a remote database's
# connect costs real time at start-up).
_RECONNECT_ROUNDS = 2


@dataclass(frozen=True, slots=True)
class RehearsalReport:
    """How a rehearsal went: requests answered 2xx, the others, seconds, what was cleaned up,
    and the code packing (None when it did not run)."""

    ok: int
    failed: int
    seconds: float
    settled: Settled
    packed: PackReport | None = None


def check_requests(name: str, requests: object) -> tuple[Request, ...]:
    """Validate a ``rehearse=`` argument: paths (``"/admin/login/?next=/"``) or environ-style
    dicts (``{"PATH_INFO": "/", "REQUEST_METHOD": "HEAD", "HTTP_ACCEPT_LANGUAGE": "de"}``)."""
    if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
        raise InvalidArgument(
            f"{name}=... takes a list of paths or environ dicts, not {requests!r}"
        )
    for item in requests:
        if isinstance(item, str):
            if not item.startswith("/") or any(c in item for c in " \r\n"):
                raise InvalidArgument(f"{name}: {item!r} is not a path (starts with '/')")
        elif isinstance(item, Mapping):
            for key, value in item.items():
                if not isinstance(key, str) or not (key in _KEYS or key.startswith("HTTP_")):
                    raise InvalidArgument(
                        f"{name}: an environ dict takes {', '.join(sorted(_KEYS))} and HTTP_* "
                        f"keys, not {key!r}"
                    )
                if not isinstance(value, str) or "\r" in value or "\n" in value:
                    raise InvalidArgument(f"{name}: {key} must be a one-line str, not {value!r}")
        else:
            raise InvalidArgument(f"{name}: {item!r} is neither a path nor an environ dict")
    return tuple(requests)


def _http(request: Request, host: str) -> tuple[str, bytes]:
    """The request's path (for log lines) and its bytes on the wire."""
    if isinstance(request, str):
        parts = urlsplit(request)
        fields: Mapping[str, str] = {"PATH_INFO": parts.path, "QUERY_STRING": parts.query}
    else:
        fields = request
    path = quote(fields.get("PATH_INFO") or "/", safe="/%:@!$&'()*+,;=-._~")
    if fields.get("QUERY_STRING"):
        path += "?" + fields["QUERY_STRING"]
    headers = {"Host": host, "User-Agent": "forkmem-rehearsal", "Connection": "close"}
    if fields.get("CONTENT_TYPE"):
        headers["Content-Type"] = fields["CONTENT_TYPE"]
    for key, value in fields.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").title()] = value
    method = fields.get("REQUEST_METHOD") or "GET"
    lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return path, "\r\n".join(lines).encode("latin-1")


def _status(answer: bytes) -> str:
    first = answer.split(b"\r\n", 1)[0].decode("latin-1", "replace")
    return first.split(" ", 1)[1] if " " in first else first or "no answer"


def _serve_one(worker: Any, wire: bytes, *, sync_path: bool = False) -> bytes:
    """One request through ``worker``'s parser and handler; the raw answer.

    With ``sync_path``, through ``handle()``, the connection handler a sync worker runs for
    each request (parse, handle, graceful close); else the parser and ``handle_request()``
    directly (other worker classes have their own connection handlers, and ``handle()`` would
    wrap a TLS listener's connection, which this plain-text request is not). Either way the
    worker then touches its heartbeat file, as every worker does between requests.
    """
    from gunicorn import http

    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.create_server(("127.0.0.1", 0)))
        listener.settimeout(_TIMEOUT)
        client = stack.enter_context(socket.create_connection(listener.getsockname()))
        client.settimeout(_TIMEOUT)
        conn, addr = listener.accept()
        stack.enter_context(conn)
        conn.settimeout(_TIMEOUT)
        client.sendall(wire)
        client.shutdown(socket.SHUT_WR)  # the worker's graceful close then ends at once
        try:
            if sync_path:
                worker.handle(listener, conn, addr)  # answers 500 itself for an exception
            else:
                req = next(http.get_parser(worker.cfg, conn, addr))
                worker.handle_request(listener, req, conn, addr)
        except StopIteration:
            pass  # the handler's way of saying "connection closed"
        finally:
            conn.close()
        worker.notify()
        chunks = []
        while chunk := client.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _serve_logged(worker: Any, path: str, wire: bytes, *, sync_path: bool) -> bool:
    """Serve one request; False (logged with its path) when it raised or answered non-2xx."""
    try:
        status = _status(_serve_one(worker, wire, sync_path=sync_path))
    except Exception:
        _logger.warning("forkmem: rehearsing %s raised", path, exc_info=True)
        return False
    if status[:1] != "2":
        _logger.warning("forkmem: rehearsing %s answered %r", path, status)
        return False
    return True


def rehearse(
    server: Any, requests: Sequence[Request], *, rounds: int = 1, pack_code: bool = False
) -> RehearsalReport:
    """Serve each request in this process with a sync worker object of ``server`` (the
    arbiter), ``rounds`` times, then `settle()` what the app left behind.

    A request that raises or answers anything but 2xx in the first round is logged with its path,
    counted in ``failed`` and not served again; the others still run. With ``pack_code`` and at
    least two rounds, the second round records the code objects it runs and `pack()` moves them
    together before the later rounds specialize them; the database connections are closed
    before it and the next two rounds, so the connect path is among them. Raises
    `UnsafeToFork` when the app left threads running.
    """
    from gunicorn.workers.sync import SyncWorker

    host = "localhost"
    for listener in getattr(server, "LISTENERS", ()):
        sock = getattr(listener, "sock", listener)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            address, port = sock.getsockname()[:2]
            host = f"[{address}]:{port}" if sock.family == socket.AF_INET6 else f"{address}:{port}"
            break
    before = snapshot()
    started = time.perf_counter()
    worker = SyncWorker(0, server.pid, [], server.app, server.timeout, server.cfg, server.log)
    # The code recorded for packing is what the workers will run: a sync worker's own
    # connection handler where the workers are sync workers.
    sync_path = issubclass(getattr(server, "worker_class", SyncWorker), SyncWorker) and not (
        getattr(server.cfg, "is_ssl", False)
    )
    try:
        worker.wsgi = server.app.wsgi()
        wires = [_http(request, host) for request in requests]
        good = [
            wire for path, wire in wires if _serve_logged(worker, path, wire, sync_path=sync_path)
        ]

        def serve_round() -> None:
            for wire in good:
                with contextlib.suppress(Exception):  # the first round logged how it answers
                    _serve_one(worker, wire, sync_path=sync_path)

        left = rounds - 1
        packed = None
        if pack_code and good and left:
            # Round 1 ran the one-off start-up paths; round 2 is the request path itself,
            # from the same state a worker starts in: without database connections (the
            # settle step closes them before the fork), so the connect path a worker runs
            # on its first request is recorded and packed too, not only the pool's reuse.
            close_databases()
            with CodeRecorder() as recorder:
                serve_round()
            left -= 1
            packed = pack(recorder.codes.values())
            del recorder
        for done in range(left):
            if packed is not None and done < _RECONNECT_ROUNDS:
                close_databases()  # the packed connect path runs again, and specializes
            serve_round()
    finally:
        worker.tmp.close()
    ok, failed = len(good), len(wires) - len(good)
    settled = settle(before, what="the rehearsal")
    return RehearsalReport(ok, failed, time.perf_counter() - started, settled, packed)
