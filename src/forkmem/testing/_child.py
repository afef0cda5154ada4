"""Run a function in a forked child and bring back its value, its error and its memory."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from forkmem.errors import ChildCrashed, ChildTimeout, InvalidArgument, UnsupportedPlatform

if TYPE_CHECKING:
    from collections.abc import Callable

    from forkmem._common import MemoryUsage
    from forkmem.testing._attribution import Attribution
    from forkmem.testing._pagemap import PageSnapshot

__all__ = ["ChildResult", "ChildTraceback", "run_in_child"]

_ROLLUP = "/proc/self/smaps_rollup"
# Exit codes of the child when it could not report (the pipe is the real channel).
_EXIT_OK = 0
_EXIT_UNREPORTED = 70


@dataclass(frozen=True, slots=True)
class ChildResult:
    """What [`run_in_child()`][forkmem.testing.run_in_child] learned from one forked child.

    ``value`` is what ``fn`` returned. ``before`` and ``after`` are the child's
    [`MemoryUsage`][forkmem.MemoryUsage] right before and right after ``fn`` ran; ``copied`` is the
    growth of its ``Private_Dirty`` in between (bytes): pages it copied from the parent plus
    memory it newly wrote. ``parent_heap`` is the parent's anonymous RSS at fork time (bytes,
    ``None`` where unknown). ``attribution`` says which objects sit on the copied pages (``None``
    unless asked for, or where ``/proc/self/pagemap`` is unreadable).
    """

    value: Any
    pid: int
    exitcode: int
    before: MemoryUsage
    after: MemoryUsage
    copied: int
    parent_heap: int | None
    attribution: Attribution | None

    @property
    def copied_fraction(self) -> float | None:
        """``copied`` as a fraction of ``parent_heap`` (``None`` where the heap is unknown)."""
        if not self.parent_heap:
            return None
        return self.copied / self.parent_heap


class ChildTraceback(Exception):
    """The formatted traceback of an exception raised in a forked child.

    Attached to the re-raised exception as a note (Python 3.11+) and, on 3.10, as its
    ``__cause__``; the text is also in ``exc.child_traceback`` where the exception allows it.
    """


def _check_supported() -> None:
    if not hasattr(os, "fork"):
        raise UnsupportedPlatform("run_in_child needs os.fork(), which this platform lacks")
    if not os.path.exists(_ROLLUP):
        raise UnsupportedPlatform(f"run_in_child measures the child with {_ROLLUP}; it is missing")


def check_timeout(timeout: object) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise InvalidArgument(f"timeout must be a number of seconds, not {timeout!r}")
    if not 0 < timeout < float("inf"):
        raise InvalidArgument(f"timeout must be a positive, finite number of seconds: {timeout!r}")
    return float(timeout)


def run_in_child(
    fn: Callable[..., Any],
    *args: Any,
    timeout: float = 60.0,
    attribution: bool = False,
    **kwargs: Any,
) -> ChildResult:
    """Fork, call ``fn(*args, **kwargs)`` in the child, and return a `ChildResult`.

    The value must be picklable: it travels back through a pipe. If ``fn`` raises, the same
    exception is raised here with the child's traceback attached (a note, or ``__cause__`` on
    3.10). ``attribution=True`` also works out which objects the child copied (costs about a
    second per million objects). ``timeout`` and ``attribution`` are taken by this function, not
    passed to ``fn``.

    Raises [`ChildTimeout`][forkmem.ChildTimeout] (the child is killed) when ``fn`` takes longer
    than ``timeout`` seconds, [`ChildCrashed`][forkmem.ChildCrashed] when the child dies without
    reporting (a signal, ``os._exit``), [`UnsupportedPlatform`][forkmem.UnsupportedPlatform] without
    ``os.fork`` or ``/proc``, [`InvalidArgument`][forkmem.InvalidArgument] for a bad ``fn`` or
    ``timeout``.
    """
    return run_forked(fn, args, kwargs, timeout=timeout, attribute=bool(attribution))


def run_forked(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    timeout: float,
    attribute: bool | int,
) -> ChildResult:
    """``attribute``: ``True``/``False``, or a byte count: attribute only if copied exceeds it."""
    __tracebackhide__ = True  # pytest: the interesting frames are the child's, in the note
    if not callable(fn):
        raise InvalidArgument(f"run_in_child needs a callable, not {type(fn).__name__}")
    seconds = check_timeout(timeout)
    _check_supported()
    import pickle
    import warnings

    parent_heap = parent_heap_size()
    for stream in (sys.stdout, sys.stderr):
        # Unflushed output would otherwise be written twice: once by each process.
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a closed or odd stream must not stop the test
            pass
    read_fd, write_fd = os.pipe()
    try:
        with warnings.catch_warnings():
            # 3.12+ warns when forking a multi-threaded process (pytest-xdist workers are): the
            # child only runs fn and exits through os._exit, never relying on other threads.
            warnings.filterwarnings("ignore", ".*fork.*", DeprecationWarning)
            pid = os.fork()
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid == 0:
        os.close(read_fd)
        _child_main(write_fd, fn, args, kwargs, attribute)
    os.close(write_fd)
    data, status = _collect(pid, read_fd, seconds)
    exitcode = os.waitstatus_to_exitcode(status)
    try:
        payload = pickle.loads(data) if data else None
    except Exception:
        payload = None
    if not isinstance(payload, dict):
        raise ChildCrashed(_crash_message(pid, exitcode, bool(data)), exitcode=exitcode)
    if "internal" in payload:
        raise ChildCrashed(
            f"forkmem failed inside child {pid}:\n{payload['internal']}", exitcode=exitcode
        )
    if "error" in payload:
        if "exit_code" in payload:
            # Raising SystemExit here would end the parent (the test session) instead.
            raise ChildCrashed(
                f"forked child {pid}: fn called sys.exit({payload['message']})",
                exitcode=payload["exit_code"],
            )
        raise _rebuild_error(payload, pid)
    before, after = payload["before"], payload["after"]
    return ChildResult(
        value=payload["value"],
        pid=pid,
        exitcode=exitcode,
        before=before,
        after=after,
        copied=payload["copied"],
        parent_heap=parent_heap,
        attribution=payload.get("attribution"),
    )


def parent_heap_size() -> int | None:
    from forkmem.usage import rss_breakdown

    try:
        return rss_breakdown().rss_anon
    except Exception:  # the heap figure only decorates messages
        return None


def _crash_message(pid: int, exitcode: int, partial: bool) -> str:
    if exitcode < 0:
        import signal

        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        how = f"was killed by {name} (exit code {exitcode})"
    else:
        how = f"exited with code {exitcode}"
    tail = " after a partial report" if partial else " before reporting back (os._exit or a crash)"
    return f"forked child {pid} {how}{tail}"


def _collect(pid: int, fd: int, timeout: float) -> tuple[bytes, int]:
    """Read the child's report until EOF and reap it; kill it when the deadline passes."""
    import select

    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    status: int | None = None
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    reaped = False
    try:
        eof = False
        while status is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildTimeout(
                    f"forked child {pid} did not finish within {timeout:g} s; it was killed"
                )
            if not eof and poller.poll(min(remaining, 0.05) * 1000):
                chunk = os.read(fd, 1 << 20)
                if chunk:
                    chunks.append(chunk)
                    continue
                eof = True
            elif eof:
                time.sleep(min(remaining, 0.005))
            # A grandchild may hold the pipe open after the child is gone: poll the child too.
            done, raw = os.waitpid(pid, os.WNOHANG)
            if done:
                reaped = True
                status = raw
        if not eof:
            os.set_blocking(fd, False)
            while True:  # the child is gone: whatever it wrote is in the pipe already
                try:
                    chunk = os.read(fd, 1 << 20)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks), status
    finally:
        os.close(fd)
        if not reaped:
            _kill(pid)


def _kill(pid: int) -> None:
    import signal

    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _rebuild_error(payload: dict[str, Any], pid: int) -> BaseException:
    import pickle

    text: str = payload["traceback"]
    exc: BaseException | None = None
    outcome = payload.get("outcome")
    if outcome is not None:
        exc = _pytest_outcome(outcome, payload["message"])
    elif payload["error"] is not None:
        try:
            exc = pickle.loads(payload["error"])
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RuntimeError(f"{payload['type']}: {payload['message']} (raised in forked child)")
    header = f"Traceback in forked child {pid}:\n{text.rstrip()}"
    if sys.version_info >= (3, 11):
        exc.add_note(header)
    else:
        exc.__cause__ = ChildTraceback(header)
    with contextlib.suppress(Exception):  # exceptions with __slots__ or read-only attributes
        exc.child_traceback = text  # type: ignore[attr-defined]
    return exc


_OUTCOMES = ("Skipped", "Failed", "XFailed")


def _pytest_outcome(name: str, message: str) -> BaseException | None:
    """pytest.skip()/fail()/xfail() in the child: the same outcome here (they do not pickle)."""
    try:
        import pytest
    except ImportError:
        return None
    factory = {"Skipped": pytest.skip, "Failed": pytest.fail, "XFailed": pytest.xfail}[name]
    return factory.Exception(message)  # type: ignore[attr-defined,no-any-return]


def _child_main(
    fd: int,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    attribute: bool | int,
) -> NoReturn:
    """Everything the child does. It leaves only through os._exit: no atexit handlers and no
    second flush of buffers the parent owns."""
    code = _EXIT_UNREPORTED
    try:
        try:
            data = _child_report(fn, args, kwargs, attribute)
        except BaseException:
            import pickle
            import traceback

            data = pickle.dumps({"internal": traceback.format_exc()})
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        code = _EXIT_OK
    except BaseException:
        pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()  # what fn printed: written once, by the child
            except BaseException:
                pass
        os._exit(code)


def _child_report(
    fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], attribute: bool | int
) -> bytes:
    import pickle

    from forkmem.usage import memory

    snapshot: PageSnapshot | None = None
    if attribute is not False:
        from forkmem.testing._pagemap import page_snapshot

        try:
            snapshot = page_snapshot()
        except (OSError, UnsupportedPlatform):
            snapshot = None
    before = memory()
    __tracebackhide__ = True
    error: BaseException | None = None
    value: Any = None
    try:
        value = fn(*args, **kwargs)
    except BaseException as exc:
        error = exc
    after = memory()
    copied = max(0, (after.private_dirty or 0) - (before.private_dirty or 0))
    payload: dict[str, Any] = {"before": before, "after": after, "copied": copied}
    if snapshot is not None and (attribute is True or copied > attribute):
        from forkmem.testing._attribution import copied_objects

        try:
            payload["attribution"] = copied_objects(since=snapshot)
        except Exception:  # attribution is a bonus; never lose the result over it
            payload["attribution"] = None
    if error is None:
        try:
            payload["value"] = value
            return pickle.dumps(payload)
        except Exception as exc:
            error = exc
            add_note = getattr(exc, "add_note", None)  # 3.11+
            if add_note is not None:
                add_note(f"(the return value of {fn!r} could not be pickled)")
            payload.pop("value", None)
    import traceback

    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_locals.get("__tracebackhide__"):
        tb = tb.tb_next  # start at the user's code, not at the lines here that called it
    if tb is None:
        tb = error.__traceback__
    payload["traceback"] = "".join(traceback.format_exception(type(error), error, tb))
    payload["type"] = f"{type(error).__module__}.{type(error).__qualname__}"
    payload["message"] = str(error)
    if isinstance(error, SystemExit):
        code = error.code
        payload["exit_code"] = code if isinstance(code, int) else (0 if code is None else 1)
    if type(error).__name__ in _OUTCOMES and any(
        base.__name__ == "OutcomeException" for base in type(error).__mro__
    ):
        payload["outcome"] = type(error).__name__
        payload["message"] = getattr(error, "msg", None) or str(error)
    blob: bytes | None
    try:
        blob = pickle.dumps(error)
        pickle.loads(blob)  # some exceptions pickle but cannot be rebuilt
    except Exception:
        blob = None
    payload["error"] = blob
    return pickle.dumps(payload)
