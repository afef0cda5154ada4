"""run_in_child: values, errors, crashes, timeouts and memory of real forked children."""

from __future__ import annotations

import atexit
import ctypes
import faulthandler
import os
import signal
import sys
import time

import pytest

from forkmem import ChildCrashed, ChildTimeout, InvalidArgument
from forkmem._common import MemoryUsage
from forkmem.testing import ChildResult, run_in_child

pytestmark = pytest.mark.linux_only

MiB = 1024 * 1024


def test_value_args_and_kwargs_come_back() -> None:
    result = run_in_child(lambda a, b, *, c: (a + b) * c, 2, 3, c=4)
    assert isinstance(result, ChildResult)
    assert result.value == 20
    assert result.exitcode == 0
    assert result.pid != os.getpid()
    with pytest.raises(ProcessLookupError):
        os.kill(result.pid, 0)  # reaped: no zombie left behind


def test_the_child_is_a_fork_of_this_process() -> None:
    marker = object()
    assert run_in_child(lambda: (os.getppid(), id(marker))).value == (os.getpid(), id(marker))


def test_memory_before_and_after_are_real_readings() -> None:
    result = run_in_child(lambda: None)
    assert isinstance(result.before, MemoryUsage)
    assert isinstance(result.after, MemoryUsage)
    assert result.before.pid == result.after.pid == result.pid
    assert result.before.private_dirty is not None
    assert result.parent_heap is not None
    assert result.parent_heap > 0
    assert result.copied < 4 * MiB  # a child that does nothing copies next to nothing


def test_copied_counts_pages_the_child_writes() -> None:
    buffer = bytearray(32 * MiB)  # written once here: resident and shared after fork

    def scribble() -> None:
        for offset in range(0, len(buffer), 4096):
            buffer[offset] = 1

    result = run_in_child(scribble)
    assert result.copied >= 28 * MiB
    assert result.after.private_dirty - result.before.private_dirty == result.copied
    assert result.copied_fraction is not None
    assert 0 < result.copied_fraction < 1.5


class Boom(Exception):
    pass


def _raise_boom() -> None:
    raise Boom("from the child")


def test_exception_is_reraised_with_the_child_traceback() -> None:
    with pytest.raises(Boom, match="from the child") as info:
        run_in_child(_raise_boom)
    text = info.value.child_traceback  # type: ignore[attr-defined]
    assert "_raise_boom" in text
    assert 'raise Boom("from the child")' in text
    if sys.version_info >= (3, 11):
        assert any("Traceback in forked child" in note for note in info.value.__notes__)
    else:
        assert "Traceback in forked child" in str(info.value.__cause__)


class Unrebuildable(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")  # pickle calls __init__ with one argument: fails


def test_exception_that_cannot_travel_becomes_runtime_error() -> None:
    def fail() -> None:
        raise Unrebuildable(1, 2)

    with pytest.raises(RuntimeError, match=r"Unrebuildable: 1/2") as info:
        run_in_child(fail)
    assert "raise Unrebuildable(1, 2)" in info.value.child_traceback  # type: ignore[attr-defined]


def test_unpicklable_value_is_an_error() -> None:
    with pytest.raises((AttributeError, TypeError, __import__("pickle").PicklingError)):
        run_in_child(lambda: lambda: None)


def _segfault() -> None:
    faulthandler.disable()  # pytest enables it; its dump of the crash would only add noise here
    ctypes.string_at(0)


def test_segfault_is_child_crashed_with_the_signal() -> None:
    with pytest.raises(ChildCrashed, match="SIGSEGV") as info:
        run_in_child(_segfault)
    assert info.value.exitcode == -signal.SIGSEGV
    assert isinstance(info.value, ChildProcessError)


def test_os_exit_is_child_crashed_with_the_code() -> None:
    with pytest.raises(ChildCrashed, match="exited with code 3") as info:
        run_in_child(os._exit, 3)
    assert info.value.exitcode == 3


def test_sys_exit_in_the_child_is_child_crashed_not_an_exit_here() -> None:
    with pytest.raises(ChildCrashed, match=r"sys\.exit\(4\)") as info:
        run_in_child(sys.exit, 4)
    assert info.value.exitcode == 4


def test_pytest_outcomes_in_the_child_come_back() -> None:
    with pytest.raises(pytest.skip.Exception, match="not here"):
        run_in_child(pytest.skip, "not here")
    with pytest.raises(pytest.fail.Exception, match="wrong"):
        run_in_child(pytest.fail, "wrong")


def test_timeout_kills_the_child() -> None:
    pids: list[int] = []
    read_fd, write_fd = os.pipe()

    def sleeper() -> None:
        os.write(write_fd, str(os.getpid()).encode())
        time.sleep(60)

    try:
        with pytest.raises(ChildTimeout, match=r"did not finish within 0\.5 s"):
            run_in_child(sleeper, timeout=0.5)
        pids.append(int(os.read(read_fd, 32)))
    finally:
        os.close(read_fd)
        os.close(write_fd)
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)  # killed and reaped
    assert isinstance(ChildTimeout("x"), TimeoutError)


def test_a_grandchild_holding_the_pipe_does_not_hang_the_parent() -> None:
    def spawn_sleeper() -> int:
        pid = os.fork()
        if pid == 0:  # inherits the report pipe and keeps it open
            time.sleep(30)
            os._exit(0)
        return pid

    grandchild = run_in_child(spawn_sleeper, timeout=20).value
    try:
        os.kill(grandchild, 0)  # still alive: we did not wait for it
    finally:
        os.kill(grandchild, signal.SIGKILL)


def test_child_skips_atexit_handlers(tmp_path: os.PathLike[str]) -> None:
    flag = os.path.join(tmp_path, "atexit-ran")

    def register_and_return() -> str:
        atexit.register(lambda: open(flag, "w").close())
        return "done"

    assert run_in_child(register_and_return).value == "done"
    assert not os.path.exists(flag)


def test_buffered_output_is_written_once(capfd: pytest.CaptureFixture[str]) -> None:
    sys.stdout.write("parent-before-fork|")  # still in the buffer when we fork
    run_in_child(print, "child-line")
    sys.stdout.flush()
    out = capfd.readouterr().out
    assert out.count("parent-before-fork|") == 1
    assert out.count("child-line") == 1


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), float("inf"), "5", True])
def test_bad_timeout_is_invalid_argument(timeout: object) -> None:
    with pytest.raises(InvalidArgument, match="timeout"):
        run_in_child(int, timeout=timeout)  # type: ignore[arg-type]


def test_non_callable_is_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="callable"):
        run_in_child(42)  # type: ignore[arg-type]
