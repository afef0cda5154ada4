"""The fork server behind the Airflow integration's ``fork_server`` option, with real processes.

Each test runs in a forked child (``run_forked``), which plays the parent: starting a server
makes that process a child subreaper, and that must not leak into the pytest process.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any, NoReturn

import psutil
import pytest

from _forking import run_forked
from forkmem import ForkmemError, InvalidArgument
from forkmem._fork_server import ForkServer, ForkServerError

pytestmark = pytest.mark.linux_only

STATE = {"prepared": 0}


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def _report(fds: list[int], request: dict[str, Any]) -> NoReturn:
    """A worker: write what it knows to the descriptor it was given, exit with the asked code."""
    os.write(fds[0], f"{STATE['prepared']} {request.get('tag', '')}".encode())
    os.close(fds[0])
    os._exit(request.get("code", 0))


def _spawn(server: ForkServer, request: dict[str, Any]) -> tuple[int, bytes, int]:
    """Spawn a worker with a pipe; return (pid, what it wrote, its exit code from waitpid)."""
    read_end, write_end = os.pipe()
    try:
        pid = server.spawn([write_end], request)
    finally:
        os.close(write_end)
    data = _read_all(read_end)
    # Only a parent can wait for a process: this proves the worker is ours, not the server's.
    _, status = os.waitpid(pid, 0)
    return pid, data, os.waitstatus_to_exitcode(status)


def test_workers_are_the_parents_children_with_their_exit_codes() -> None:
    def body() -> dict[str, Any]:
        server = ForkServer(_report)
        server.start()
        try:
            pid, data, code = _spawn(server, {"code": 7, "tag": "first"})
            pid2, _, code2 = _spawn(server, {"code": 0})
            return {
                "me": os.getpid(),
                "server": server.pid,
                "pids": [pid, pid2],
                "data": data.decode(),
                "codes": [code, code2],
                "spawned": server.spawned,
            }
        finally:
            server.close()

    out = run_forked(body)
    assert out["codes"] == [7, 0]
    assert out["data"] == "0 first"
    assert out["spawned"] == 2
    assert out["server"] not in out["pids"]
    assert out["me"] not in out["pids"]
    assert len(set(out["pids"])) == 2


def test_prepare_runs_in_the_server_and_workers_see_it() -> None:
    def prepare(request: dict[str, Any]) -> None:
        STATE["prepared"] += 1

    def body() -> dict[str, Any]:
        server = ForkServer(_report, prepare=prepare)
        server.start()
        try:
            seen = [_spawn(server, {})[1].decode() for _ in range(3)]
        finally:
            server.close()
        return {"seen": seen, "here": STATE["prepared"]}

    out = run_forked(body)
    # The server keeps its state from one request to the next; the parent never ran prepare.
    assert out["seen"] == ["1 ", "2 ", "3 "]
    assert out["here"] == 0


def test_a_failing_worker_exits_124_and_the_server_keeps_serving() -> None:
    def run(fds: list[int], request: dict[str, Any]) -> None:
        if request.get("fail"):
            raise RuntimeError("boom")
        _report(fds, request)

    def body() -> dict[str, Any]:
        server = ForkServer(run)
        server.start()
        try:
            failed = _spawn(server, {"fail": True})[2]
            returned = _spawn(server, {"code": 5})[2]
        finally:
            server.close()
        return {"failed": failed, "returned": returned}

    assert run_forked(body) == {"failed": 124, "returned": 5}


def test_close_stops_the_server_and_later_spawns_raise() -> None:
    def body() -> dict[str, Any]:
        server = ForkServer(_report)
        server.start()
        pid = server.pid
        server.close()
        gone = not psutil.pid_exists(pid)
        try:
            server.spawn([], {})
        except ForkServerError as exc:
            return {"gone": gone, "error": str(exc), "alive": server.alive}
        return {"gone": gone, "error": None}

    out = run_forked(body)
    assert out == {"gone": True, "error": "the fork server is not running", "alive": False}
    assert issubclass(ForkServerError, ForkmemError)
    assert issubclass(ForkServerError, OSError)


def test_the_server_dies_with_its_parent() -> None:
    def body() -> int:
        server = ForkServer(_report)
        server.start()
        return server.pid  # run_forked's child exits without closing it

    pid = run_forked(body)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        pytest.fail(f"the fork server {pid} outlived its parent")


def _subreaper() -> int:
    import ctypes

    flag = ctypes.c_int(-1)
    ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
    return flag.value


def test_the_parent_is_a_subreaper_only_during_a_request() -> None:
    def body() -> dict[str, Any]:
        server = ForkServer(_report)
        server.start()
        try:
            after_start = _subreaper()
            _spawn(server, {})
            after_spawn = _subreaper()
            # An orphan made now goes to init (or a subreaper above us), not to this process.
            read_end, write_end = os.pipe()
            middle = os.fork()
            if middle == 0:  # pragma: no cover - child
                orphan = os.fork()
                if orphan == 0:
                    time.sleep(0.5)
                    os._exit(0)
                os.write(write_end, str(orphan).encode())
                os._exit(0)
            os.close(write_end)
            orphan = int(_read_all(read_end))
            os.waitpid(middle, 0)
            orphan_parent = psutil.Process(orphan).ppid()
            return {
                "flags": [after_start, after_spawn],
                "orphan_is_ours": orphan_parent == os.getpid(),
            }
        finally:
            server.close()

    assert run_forked(body) == {"flags": [0, 0], "orphan_is_ours": False}


class _SlowToAnswer(ForkServer):
    """Forks the worker, then answers too late: the parent has given up by then."""

    def _fork_worker(self, *args: Any) -> int:  # pragma: no cover - runs in the server
        pid = super()._fork_worker(*args)
        time.sleep(3)
        return pid


def test_a_worker_whose_parent_gave_up_never_runs() -> None:
    def body() -> dict[str, Any]:
        server = _SlowToAnswer(_report, timeout=1)
        server.start()
        read_end, write_end = os.pipe()
        try:
            server.spawn([write_end], {"tag": "must not run"})
        except ForkServerError as exc:
            error = str(exc)
        else:
            error = ""
        finally:
            os.close(write_end)
        # The worker got end-of-file on its go pipe and exited without writing a byte.
        return {"error": error, "written": _read_all(read_end).decode(), "alive": server.alive}

    out = run_forked(body)
    assert "did not answer" in out["error"]
    assert out["written"] == ""
    assert out["alive"] is False


def test_bad_requests_get_typed_errors() -> None:
    def body() -> list[str]:
        server = ForkServer(_report)
        server.start()
        errors = []
        try:
            for fds, request in (([], {"x": object()}), ([], ["not", "a", "dict"]), ([0] * 16, {})):
                try:
                    server.spawn(fds, request)  # type: ignore[arg-type]
                except InvalidArgument as exc:
                    errors.append(type(exc).__name__)
            errors.append(str(server.alive))  # bad input does not stop a healthy server
        finally:
            server.close()
        return errors

    assert run_forked(body) == ["InvalidArgument"] * 3 + ["True"]
    with pytest.raises(InvalidArgument):
        ForkServer(_report, timeout=0)


def test_a_killed_server_is_noticed_and_spawn_raises() -> None:
    def body() -> dict[str, Any]:
        server = ForkServer(_report)
        server.start()
        os.kill(server.pid, signal.SIGKILL)
        os.waitpid(server.pid, 0)
        try:
            server.spawn([], {})
        except ForkServerError as exc:
            return {"error": str(exc), "alive": server.alive}
        return {"error": None, "alive": server.alive}

    out = run_forked(body)
    assert out["alive"] is False
    assert out["error"] is not None
    assert "fork server" in out["error"]
