"""What a rehearsal leaves behind, its input checks, and FORKMEM_DISABLE, with real sockets,
threads and (when installed) a real Django database connection.

Each test that changes process state runs in a forked child (``run_forked``).
"""

from __future__ import annotations

import gc
import os
import socket
import threading
from typing import TYPE_CHECKING, Any

import pytest

from _forking import run_forked
from forkmem import InvalidArgument, UnsafeToFork
from forkmem._disable import disabled
from forkmem.integrations import _fork_safety, gunicorn
from forkmem.integrations._fork_safety import settle, snapshot
from forkmem.integrations._gunicorn_rehearsal import check_requests

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.linux_only


@pytest.mark.parametrize(
    "requests",
    [
        "/",
        b"/",
        ["no-slash"],
        ["/a b"],
        [42],
        [{"PATH_INFO": "/", "wsgi.input": "x"}],
        [{"HTTP_X": "a\r\nInjected: 1"}],
        [{"PATH_INFO": 1}],
    ],
)
def test_bad_rehearsal_requests_are_typed_errors(requests: Any) -> None:
    with pytest.raises(InvalidArgument):
        check_requests("rehearse", requests)
    with pytest.raises(ValueError, match="rehearse"):
        gunicorn.configure(rehearse=requests)


def test_good_rehearsal_requests_pass() -> None:
    given = ["/", "/admin/login/?next=/", {"PATH_INFO": "/x", "HTTP_ACCEPT_LANGUAGE": "de"}]
    assert check_requests("rehearse", given) == tuple(given)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"immortalize": "yes"},
        {"warmup": 1},
        {"warmup": False, "immortalize": True},
        {"rehearse_rounds": 0},
        {"rehearse_rounds": True},
        {"rehearse_rounds": 2.0},
        {"rehearse_rounds": 1001},
        {"pack_code": "no"},
    ],
)
def test_configure_rejects_bad_flags(kwargs: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        gunicorn.configure(**kwargs)


def test_settle_closes_sockets_opened_since_the_snapshot() -> None:
    def child() -> dict[str, Any]:
        old_a, old_b = socket.socketpair()
        before = snapshot()
        new_a, new_b = socket.socketpair()
        raw = socket.socket().detach()  # a socket no Python object owns, like a C driver's
        settled = settle(before, what="test")
        return {
            "old_open": old_a.fileno() >= 0 and old_b.fileno() >= 0,
            "new_closed": new_a.fileno() == -1 and new_b.fileno() == -1,
            "raw_target": os.readlink(f"/proc/self/fd/{raw}"),
            "closed": settled.sockets_closed,
            "dropped": settled.sockets_dropped,
        }

    result = run_forked(child)
    assert result["old_open"]
    assert result["new_closed"]
    assert result["raw_target"] == os.devnull  # the number stays valid, the socket is gone
    assert result["closed"] == 2
    assert result["dropped"] == 1


def test_settle_refuses_threads_that_keep_running(monkeypatch: pytest.MonkeyPatch) -> None:
    def child() -> dict[str, Any]:
        monkeypatch.setattr(_fork_safety, "_THREAD_GRACE", 0.2)
        before = snapshot()
        quick = threading.Thread(target=lambda: None, name="quick")
        quick.start()
        settle(before, what="test")  # a thread that ended by itself is fine
        stop = threading.Event()
        threading.Thread(target=stop.wait, name="app-poller", daemon=True).start()
        try:
            settle(before, what="test")
        except UnsafeToFork as exc:
            message = str(exc)
            is_runtime = isinstance(exc, RuntimeError)
        else:
            message, is_runtime = "", False
        stop.set()
        return {"message": message, "runtime": is_runtime}

    result = run_forked(child)
    assert "'app-poller'" in result["message"]
    assert result["runtime"]


def test_settle_closes_django_connections(tmp_path: Path) -> None:
    pytest.importorskip("django")

    def child() -> dict[str, Any]:
        import django
        from django.conf import settings

        settings.configure(
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": str(tmp_path / "db.sqlite3"),
                }
            },
            INSTALLED_APPS=[],
        )
        django.setup()
        from django.db import connection

        before = snapshot()
        with connection.cursor() as cursor:
            cursor.execute("select 1")
        was_open = connection.connection is not None
        settled = settle(before, what="test")
        return {
            "was_open": was_open,
            "now": connection.connection is None,
            "closed": list(settled.databases_closed),
        }

    result = run_forked(child)
    assert result == {"was_open": True, "now": True, "closed": ["django"]}


def _open_paths(prefix: str) -> list[str]:
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(prefix):
            found.append(target)
    return found


def test_settle_closes_sqlalchemy_sessions_and_engines_then_workers_use_their_own(
    tmp_path: Path,
) -> None:
    pytest.importorskip("sqlalchemy")

    def child() -> dict[str, Any]:
        from sqlalchemy import create_engine, text
        from sqlalchemy.orm import Session

        db = tmp_path / "db.sqlite3"
        engine = create_engine(f"sqlite:///{db}")
        with engine.begin() as conn:
            conn.execute(text("create table t (pid integer)"))
        before = snapshot()
        # A session left in its transaction (its connection checked out) and a pooled one.
        left_open = Session(engine)
        left_open.execute(text("select count(*) from t"))
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        held = len(_open_paths(str(db)))
        settled = settle(before, what="test")
        after = _open_paths(str(db))
        # Real workers forked now each open their own connection and write through it.
        pids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    with engine.begin() as conn:
                        conn.execute(text("insert into t values (:p)"), {"p": os.getpid()})
                    code = 0
                finally:
                    os._exit(code)
            pids.append(pid)
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        with engine.connect() as conn:
            written = sorted(conn.execute(text("select pid from t")).scalars())
        return {
            "held": held,
            "after": after,
            "closed": list(settled.databases_closed),
            "checked_out": engine.pool.checkedout(),
            "codes": codes,
            "written": written == sorted(pids),
        }

    result = run_forked(child)
    assert result["held"] >= 2, result  # the session's connection and the pooled one
    assert result["after"] == [], result
    assert result["closed"] == ["sqlalchemy (1 engine(s))"], result
    assert result["checked_out"] == 0
    assert result["codes"] == [0, 0, 0]
    assert result["written"]


def test_engines_remembered_before_a_freeze_are_disposed_after_it(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")

    def child() -> dict[str, Any]:
        from sqlalchemy import create_engine, text

        db = tmp_path / "db.sqlite3"
        engine = create_engine(f"sqlite:///{db}")
        with engine.connect() as conn:  # a pooled connection, as an app's import leaves one
            conn.execute(text("select 1"))
        known = _fork_safety.remember_engines()
        gc.freeze()  # what the master's warm-up does: the engine leaves gc.get_objects()
        try:
            hidden = not any(obj is engine for obj in gc.get_objects())
            held = len(_open_paths(str(db)))
            closed = _fork_safety.close_databases()
            return {
                "known": known,
                "hidden": hidden,
                "held": held,
                "closed": closed,
                "after": _open_paths(str(db)),
            }
        finally:
            gc.unfreeze()

    result = run_forked(child)
    assert result["known"] == 1
    assert result["hidden"]
    assert result["held"] == 1
    assert result["closed"] == ["sqlalchemy (1 engine(s))"]
    assert result["after"] == []


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("yes", True), ("0", False), ("", False)]
)
def test_disable_switch(monkeypatch: pytest.MonkeyPatch, value: str, expected: bool) -> None:
    monkeypatch.setenv("FORKMEM_DISABLE", value)
    assert disabled("test") is expected


def test_disabled_gunicorn_hooks_do_nothing() -> None:
    def child() -> dict[str, Any]:
        os.environ["FORKMEM_DISABLE"] = "1"
        before = gc.get_freeze_count()
        gunicorn.when_ready(object())

        class Worker:
            pass

        worker = Worker()
        gunicorn.pre_fork(object(), worker)
        return {"frozen": gc.get_freeze_count() - before, "slot": hasattr(worker, "_forkmem_slot")}

    assert run_forked(child) == {"frozen": 0, "slot": False}


def test_disabled_pools_are_the_stdlib_ones() -> None:
    from concurrent.futures import ProcessPoolExecutor

    from forkmem.pool import fork_pool, process_pool_executor

    def child() -> dict[str, Any]:
        os.environ["FORKMEM_DISABLE"] = "1"
        before = gc.get_freeze_count()
        with fork_pool(1, context="fork") as pool:
            pool_type = type(pool).__module__ + "." + type(pool).__qualname__
            answer = pool.apply(os.getpid) != os.getpid()
        executor = process_pool_executor(1, context="fork")
        with executor:
            executor_type = type(executor) is ProcessPoolExecutor
        return {
            "pool": pool_type,
            "answer": answer,
            "executor": executor_type,
            "frozen": gc.get_freeze_count() - before,
        }

    result = run_forked(child, timeout=60)
    assert result == {
        "pool": "multiprocessing.pool.Pool",
        "answer": True,
        "executor": True,
        "frozen": 0,
    }
