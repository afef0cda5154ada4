"""Run a function in forked children and bring its JSON result back, with a bounded wait.

One-shot: the child runs ``fn`` and writes ``{"ok": value}`` or ``{"error": traceback}``;
the parent reads to EOF before a deadline, SIGKILLs and fails the test on timeout, and reaps.
run_in_process() does the same through a multiprocessing start method.
(_memory_children.forked() is the long-lived, two-way variant.)
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import select
import signal
import time
import traceback
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable

TIMEOUT = 30.0


def run_forked(
    fn: Callable[[], Any],
    *,
    timeout: float = TIMEOUT,
    fork: Callable[[], int] = os.fork,
    before_child: Callable[[], None] | None = None,
) -> Any:
    """Fork; run ``before_child()`` then ``fn()`` in the child and return fn's result."""
    return run_forked_many(1, fn, timeout=timeout, fork=fork, before_child=before_child)[0]


def run_forked_many(
    count: int,
    fn: Callable[[], Any],
    *,
    timeout: float = TIMEOUT,
    fork: Callable[[], int] = os.fork,
    before_child: Callable[[], None] | None = None,
) -> list[Any]:
    """Fork ``count`` children at once, each running ``fn``; their results, in fork order.

    All share one deadline; if one times out or anything fails, the rest are killed and reaped.
    """
    pending: list[tuple[int, int]] = []
    raw: list[bytes] = []
    try:
        for _ in range(count):
            pending.append(_start(fn, fork, before_child))
        deadline = time.monotonic() + timeout
        while pending:
            pid, fd = pending.pop(0)
            raw.append(read_until_eof(fd, pid, deadline))
    finally:
        for pid, fd in pending:
            os.close(fd)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    results = []
    for data in raw:
        out = json.loads(data or b'{"error": "child died without answering"}')
        if "error" in out:
            pytest.fail(f"child failed:\n{out['error']}")
        results.append(out["ok"])
    return results


def read_until_eof(fd: int, pid: int, deadline: float) -> bytes:
    """Everything child ``pid`` writes to ``fd`` until it closes it; then close ``fd`` and reap.

    Past ``deadline`` (time.monotonic()) the child is SIGKILLed and the test fails.
    """
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"child {pid} did not answer in time (deadlock?)")
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)
        os.waitpid(pid, 0)


def run_in_process(
    method: str, target: Callable[[Any], None], *, timeout: float = TIMEOUT
) -> tuple[Any, int | None]:
    """Run ``target(conn)`` in a multiprocessing child started by ``method``.

    Returns the one object the child sends on ``conn`` and its exit code (None if killed).
    """
    ctx = multiprocessing.get_context(method)
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=target, args=(send,))
    proc.start()
    try:
        send.close()
        assert recv.poll(timeout), f"{method} child did not answer in time"
        value = recv.recv()
    finally:
        proc.join(timeout)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout)
    return value, proc.exitcode


def _start(
    fn: Callable[[], Any], fork: Callable[[], int], before_child: Callable[[], None] | None
) -> tuple[int, int]:
    """Fork a child that answers on a pipe and always ``os._exit``s; returns (pid, read end)."""
    r, w = os.pipe()
    pid = fork()
    if pid == 0:  # pragma: no cover - runs in the child, never returns into pytest
        code = 1
        try:
            os.close(r)
            if before_child is not None:
                before_child()
            payload = json.dumps({"ok": fn()}).encode()
            code = 0
        except BaseException:
            payload = json.dumps({"error": traceback.format_exc()}).encode()
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(w, view) :]
        finally:
            os._exit(code)
    os.close(w)
    return pid, r
