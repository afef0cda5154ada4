"""The fork hook registry, exercised with real forks."""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import TYPE_CHECKING, Any

import pytest

import forkmem
from _forking import run_forked, run_in_process
from forkmem import hooks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = pytest.mark.linux_only

CHILD_TIMEOUT = 20.0


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    before = set(map(id, forkmem.fork_hooks()))
    forkmem.hook_errors(clear=True)
    yield
    for hook in forkmem.fork_hooks():
        if id(hook) not in before:
            hook.remove()
    forkmem.hook_errors(clear=True)


def fork_and_report(child: Callable[[], Any], *, fork: Callable[[], int] = os.fork) -> Any:
    """Fork; run ``child`` in the child and return its JSON result to the parent (bounded wait)."""
    return run_forked(child, timeout=CHILD_TIMEOUT, fork=fork)


def test_order_matches_the_stdlib() -> None:
    calls: list[str] = []
    for n in (1, 2, 3):
        forkmem.at_fork(
            before=lambda n=n: calls.append(f"before{n}"),
            after_in_parent=lambda n=n: calls.append(f"parent{n}"),
            after_in_child=lambda n=n: calls.append(f"child{n}"),
            name=f"h{n}",
        )
    child_calls = fork_and_report(lambda: list(calls))
    assert child_calls == ["before3", "before2", "before1", "child1", "child2", "child3"]
    assert calls == ["before3", "before2", "before1", "parent1", "parent2", "parent3"]


def test_removed_hook_does_not_run() -> None:
    calls: list[str] = []
    keep = forkmem.at_fork(before=lambda: calls.append("keep"), name="keep")
    gone = forkmem.at_fork(before=lambda: calls.append("gone"), name="gone")
    assert gone.active
    gone.remove()
    gone.remove()  # idempotent
    assert not gone.active
    assert keep.active
    assert gone not in forkmem.fork_hooks()
    assert "removed" in repr(gone)
    fork_and_report(lambda: None)
    assert calls == ["keep"]


def test_raising_before_hook_neither_stops_the_fork_nor_other_hooks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []

    def boom() -> None:
        raise RuntimeError("hook exploded")

    forkmem.at_fork(before=lambda: calls.append("first"), name="first")
    forkmem.at_fork(before=boom, name="exploding")
    forkmem.at_fork(before=lambda: calls.append("third"), name="third")
    with caplog.at_level(logging.ERROR, logger="forkmem"):
        pid_in_child = fork_and_report(os.getpid)
    assert pid_in_child != os.getpid()
    assert calls == ["third", "first"]
    errors = forkmem.hook_errors()
    assert len(errors) == 1
    assert errors[0].hook == "exploding"
    assert errors[0].phase == "before"
    assert errors[0].error_type == "builtins.RuntimeError"
    assert errors[0].message == "hook exploded"
    assert errors[0].pid == os.getpid()
    logged = [r for r in caplog.records if r.name.startswith("forkmem")]
    assert any("exploding" in r.getMessage() for r in logged)
    assert forkmem.hook_errors(clear=True)
    assert forkmem.hook_errors() == ()


def test_raising_child_hook_is_recorded_in_the_child() -> None:
    ran: list[str] = []

    def boom() -> None:
        raise ValueError("child side")

    forkmem.at_fork(after_in_child=boom, name="bad-child")
    forkmem.at_fork(after_in_child=lambda: ran.append("ok"), name="good-child")

    def child() -> object:
        return {"ran": ran, "errors": [(e.hook, e.phase) for e in forkmem.hook_errors()]}

    out = fork_and_report(child)
    assert out == {"ran": ["ok"], "errors": [["bad-child", "after_in_child"]]}
    assert forkmem.hook_errors() == ()  # the parent saw no failure


def test_decorators_register_and_return_the_function() -> None:
    calls: list[str] = []

    @forkmem.before_fork
    def prepare() -> None:
        calls.append("before")

    @forkmem.after_fork_in_parent(name="parent-side")
    def parent_side() -> None:
        calls.append("parent")

    @forkmem.after_fork_in_child
    def child_side() -> None:
        calls.append("child")

    prepare()  # still an ordinary function
    calls.clear()
    names = [h.name for h in forkmem.fork_hooks()]
    assert "parent-side" in names
    assert any(n.endswith("prepare") for n in names)
    assert fork_and_report(lambda: list(calls)) == ["before", "child"]
    assert calls == ["before", "parent"]


def test_bad_arguments_are_invalid_argument() -> None:
    with pytest.raises(forkmem.InvalidArgument):
        forkmem.at_fork()
    with pytest.raises(forkmem.InvalidArgument):
        forkmem.at_fork(before=42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="phase"):
        forkmem.run_fork_hooks("during")  # type: ignore[arg-type]


def test_run_fork_hooks_fires_the_same_hooks_by_hand() -> None:
    calls: list[str] = []

    def boom() -> None:
        raise OSError("nope")

    forkmem.at_fork(before=lambda: calls.append("b1"), after_in_parent=boom, name="one")
    forkmem.at_fork(before=lambda: calls.append("b2"), name="two")
    assert forkmem.run_fork_hooks("before") == ()
    assert calls == ["b2", "b1"]
    failures = forkmem.run_fork_hooks("after_in_parent")
    assert [(f.hook, f.phase) for f in failures] == [("one", "after_in_parent")]


def test_c_fork_child_reports_the_same_fork_info_whatever_runs_first() -> None:
    def child() -> list[object]:
        forkmem.run_fork_hooks("after_in_child")  # before any fork_info() call this time
        info = forkmem.fork_info()
        return [info.via_hook, info.depth, info.parent_pid]

    me = forkmem.fork_info()
    assert fork_and_report(child, fork=_libc_fork) == [False, me.depth + 1, os.getpid()]


class _Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def test_hook_raising_an_unprintable_exception_does_not_stop_the_others() -> None:
    calls: list[str] = []

    def boom() -> None:
        raise _Unprintable

    forkmem.at_fork(after_in_parent=boom, name="unprintable")
    forkmem.at_fork(after_in_parent=lambda: calls.append("next"), name="next")
    failures = forkmem.run_fork_hooks("after_in_parent")
    assert calls == ["next"]
    assert [(f.hook, f.message) for f in failures] == [
        ("unprintable", "<unprintable _Unprintable>")
    ]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_registration_from_many_threads_while_forking() -> None:
    n_threads, per_thread = 8, 150
    barrier = threading.Barrier(n_threads + 1)
    made: list[forkmem.ForkHook] = []

    def register() -> None:
        barrier.wait()
        for _ in range(per_thread):
            made.append(forkmem.at_fork(after_in_child=lambda: None, name="threaded"))

    threads = [threading.Thread(target=register) for _ in range(n_threads)]
    for t in threads:
        t.start()
    barrier.wait()
    # Fork repeatedly while the threads register: every child must be able to register too.
    children_ok = []
    for _ in range(5):
        children_ok.append(
            fork_and_report(lambda: forkmem.at_fork(before=lambda: None).remove() is None)
        )
    for t in threads:
        t.join(timeout=CHILD_TIMEOUT)
    assert children_ok == [True] * 5
    registered = [h for h in forkmem.fork_hooks() if h.name == "threaded"]
    assert len(made) == n_threads * per_thread
    assert len(registered) == n_threads * per_thread
    assert {id(h) for h in registered} == {id(h) for h in made}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_child_can_register_even_if_the_lock_was_held_at_fork() -> None:
    held, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with hooks._lock:
            held.set()
            release.wait(CHILD_TIMEOUT)

    t = threading.Thread(target=hold_lock)
    t.start()
    try:
        assert held.wait(CHILD_TIMEOUT)
        # The thread holding the registry lock does not exist in the child.
        ok = fork_and_report(lambda: forkmem.at_fork(before=lambda: None).active)
    finally:
        release.set()
        t.join(CHILD_TIMEOUT)
    assert ok is True


def _libc_fork() -> int:
    # A fork done in C, like uWSGI's: os.register_at_fork callbacks do not run.
    import ctypes
    import ctypes.util

    return int(ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).fork())


def test_c_fork_child_gets_a_fresh_lock_even_after_fork_info() -> None:
    # ensure_child_hooks() asks fork_info() first, which records the fork; run_fork_hooks()
    # must still replace the registry lock that a vanished thread held at the fork.
    held, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with hooks._lock:
            held.set()
            release.wait(CHILD_TIMEOUT)

    def child() -> dict[str, Any]:
        via_hook_first = forkmem.fork_info().via_hook
        forkmem.run_fork_hooks("after_in_child")
        locked = hooks._lock.locked()
        # Only try to register when it cannot hang the child.
        active = None if locked else forkmem.at_fork(before=lambda: None).active
        return {
            "via_hook_first": via_hook_first,
            "locked": locked,
            "active": active,
            "via_hook_after": forkmem.fork_info().via_hook,
        }

    t = threading.Thread(target=hold_lock)
    t.start()
    try:
        assert held.wait(CHILD_TIMEOUT)
        out = fork_and_report(child, fork=_libc_fork)
    finally:
        release.set()
        t.join(CHILD_TIMEOUT)
    assert out == {
        "via_hook_first": False,
        "locked": False,
        "active": True,
        "via_hook_after": False,  # no os.register_at_fork callback fired in this child
    }


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_fork_from_a_non_main_thread_fires_the_hooks() -> None:
    calls: list[tuple[str, str]] = []
    forkmem.at_fork(
        before=lambda: calls.append(("before", threading.current_thread().name)),
        after_in_parent=lambda: calls.append(("parent", threading.current_thread().name)),
        after_in_child=lambda: calls.append(("child", threading.current_thread().name)),
    )
    out: list[Any] = []
    t = threading.Thread(
        target=lambda: out.append(fork_and_report(lambda: list(calls))), name="forker"
    )
    t.start()
    t.join(CHILD_TIMEOUT)
    assert out == [[["before", "forker"], ["child", "forker"]]]
    assert calls == [("before", "forker"), ("parent", "forker")]


_mp_child_calls: list[str] = []


def _mp_target(conn: Any) -> None:
    conn.send(list(_mp_child_calls))
    conn.close()


def test_multiprocessing_fork_context_fires_the_hooks() -> None:
    parent_calls: list[str] = []
    forkmem.at_fork(
        before=lambda: parent_calls.append("before"),
        after_in_child=lambda: _mp_child_calls.append("child"),
        after_in_parent=lambda: parent_calls.append("parent"),
    )
    child_calls, exitcode = run_in_process("fork", _mp_target, timeout=CHILD_TIMEOUT)
    assert child_calls == ["child"]
    assert exitcode == 0
    assert parent_calls == ["before", "parent"]


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_hook_errors_clear_loses_nothing_while_other_threads_fork() -> None:
    # Regression: hook_errors(clear=True) copied then cleared, so an error recorded by a
    # forking thread between the two steps was dropped.
    def boom() -> None:
        raise RuntimeError("counted")

    forkmem.at_fork(before=boom, name="counted")
    per_thread, threads_n = 30, 2
    drained: list[forkmem.HookError] = []
    stop = threading.Event()

    def forker() -> None:
        for _ in range(per_thread):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)

    def drainer() -> None:
        while not stop.is_set():
            drained.extend(forkmem.hook_errors(clear=True))

    old = sys.getswitchinterval()
    logger = logging.getLogger("forkmem.hooks")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # the logging call would widen the window unevenly
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=forker) for _ in range(threads_n)]
        drain = threading.Thread(target=drainer)
        drain.start()
        for t in workers:
            t.start()
        for t in workers:
            t.join(CHILD_TIMEOUT)
        stop.set()
        drain.join(CHILD_TIMEOUT)
    finally:
        sys.setswitchinterval(old)
        logger.setLevel(level)
    drained.extend(forkmem.hook_errors(clear=True))
    assert len(drained) == per_thread * threads_n


def test_base_exceptions_in_before_hooks_skip_nothing_and_are_recorded() -> None:
    # Regression: `except Exception` let SystemExit escape the trampoline, skipping the
    # later hooks of the phase and leaving no record.
    calls: list[str] = []

    def exits() -> None:
        raise SystemExit(3)

    def closes() -> None:
        raise GeneratorExit("gen")

    forkmem.at_fork(before=lambda: calls.append("last"), name="last")
    forkmem.at_fork(before=closes, name="closes")
    forkmem.at_fork(before=exits, name="exits")
    assert fork_and_report(lambda: "child ran") == "child ran"
    assert calls == ["last"]
    assert [(e.hook, e.error_type) for e in forkmem.hook_errors()] == [
        ("exits", "builtins.SystemExit"),
        ("closes", "builtins.GeneratorExit"),
    ]


def test_run_fork_hooks_reraises_a_base_exception_after_every_hook() -> None:
    calls: list[str] = []

    def interrupted() -> None:
        raise KeyboardInterrupt

    forkmem.at_fork(after_in_parent=interrupted, name="interrupted")
    forkmem.at_fork(after_in_parent=lambda: calls.append("after"), name="after")
    with pytest.raises(KeyboardInterrupt):
        forkmem.run_fork_hooks("after_in_parent")
    assert calls == ["after"]
    assert [e.error_type for e in forkmem.hook_errors()] == ["builtins.KeyboardInterrupt"]


def test_keyboard_interrupt_in_a_child_hook_is_recorded_there_and_breaks_no_fork() -> None:
    ran: list[str] = []

    def interrupted() -> None:
        raise KeyboardInterrupt

    forkmem.at_fork(after_in_child=interrupted, name="interrupted")
    forkmem.at_fork(after_in_child=lambda: ran.append("later"), name="later")

    def child() -> object:
        return [ran, [(e.hook, e.error_type) for e in forkmem.hook_errors()]]

    assert fork_and_report(child) == [["later"], [["interrupted", "builtins.KeyboardInterrupt"]]]
    assert forkmem.hook_errors() == ()


def test_keyboard_interrupt_in_a_before_hook_leaves_the_fork_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    forkmem.at_fork(before=interrupted, name="interrupted")
    with caplog.at_level(logging.ERROR, logger="forkmem"):
        assert fork_and_report(lambda: "child ran") == "child ran"
    assert [e.phase for e in forkmem.hook_errors()] == ["before"]
    assert any("interrupted" in r.getMessage() for r in caplog.records)
