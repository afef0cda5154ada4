"""The pytest plugin's work, imported only when a test uses ``cow`` or ``limit_cow``."""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any

import pytest

from forkmem.errors import ChildCrashed, ChildTimeout, CopyLimitExceeded, InvalidArgument
from forkmem.testing._child import ChildResult, check_timeout, run_forked
from forkmem.testing._limits import CopyLimit, assert_shared, check, run_limited
from forkmem.testing._traceback import hide_frame

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CowFixture", "run_marked", "skip_if_unsupported"]

_DEFAULT_TIMEOUT = 60.0


def skip_if_unsupported() -> None:
    """Skip the running test, saying why, where forking or /proc is unavailable."""
    if not hasattr(os, "fork"):
        pytest.skip("forkmem: os.fork() is not available on this platform")
    if not os.path.exists("/proc/self/smaps_rollup"):
        pytest.skip("forkmem: /proc/self/smaps_rollup is not available (Linux 4.14+ needed)")


class CowFixture:
    """The ``cow`` fixture: run functions in forked children of the test process."""

    def __init__(self) -> None:
        self._baseline: ChildResult | None = None

    def run(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float = _DEFAULT_TIMEOUT,
        attribution: bool = False,
        **kwargs: Any,
    ) -> ChildResult:
        """[`run_in_child()`][forkmem.testing.run_in_child] for this test."""
        __tracebackhide__ = True
        return run_forked(fn, args, kwargs, timeout=timeout, attribute=bool(attribution))

    def baseline(self, *, timeout: float = _DEFAULT_TIMEOUT) -> ChildResult:
        """What a child that does nothing copies (measured once per test, then reused)."""
        if self._baseline is None:
            self._baseline = run_forked(_nothing, (), {}, timeout=timeout, attribute=False)
        return self._baseline

    def assert_shared(
        self,
        fn: Callable[[], Any],
        *,
        max_copied: str | int | float | None = None,
        max_fraction: float | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
    ) -> ChildResult:
        """[`assert_shared()`][forkmem.testing.assert_shared] for this test."""
        __tracebackhide__ = True
        return assert_shared(fn, max_copied=max_copied, max_fraction=max_fraction, timeout=timeout)


def _nothing() -> None:
    return None


def _limit_of(marker: pytest.Mark) -> tuple[CopyLimit, float]:
    args, kwargs = list(marker.args), dict(marker.kwargs)
    if len(args) > 1:
        raise InvalidArgument("limit_cow takes one positional limit, e.g. limit_cow('5 MiB')")
    given = "limit" in kwargs or bool(args)
    limit = args[0] if args else kwargs.pop("limit", None)
    if given and limit is None:
        # An explicit None used to mean the default silently; leaving the limit out says that.
        raise InvalidArgument(
            "limit_cow(None) sets no limit: give a size (limit_cow('5 MiB')), a fraction "
            "(limit_cow(fraction=0.1)), or nothing for the default"
        )
    fraction = kwargs.pop("fraction", None)
    timeout = kwargs.pop("timeout", _DEFAULT_TIMEOUT)
    if kwargs:
        raise InvalidArgument(f"limit_cow got unknown arguments: {', '.join(sorted(kwargs))}")
    return CopyLimit.of(limit, fraction), check_timeout(timeout)


def run_marked(item: pytest.Function, marker: pytest.Mark) -> None:
    """Run a ``limit_cow`` test's body in a forked child and check what it copied."""
    __tracebackhide__ = hide_frame
    test = item.obj
    if inspect.iscoroutinefunction(test) or inspect.isasyncgenfunction(test):
        pytest.fail("limit_cow cannot run async tests", pytrace=False)
    try:
        how, timeout = _limit_of(marker)
    except InvalidArgument as exc:
        pytest.fail(f"bad limit_cow marker on {item.nodeid}: {exc}", pytrace=False)
    skip_if_unsupported()
    names = item._fixtureinfo.argnames
    args = {name: item.funcargs[name] for name in names}

    def body() -> None:
        __tracebackhide__ = True
        test(**args)

    try:
        result, limit = run_limited(body, how, timeout=timeout)
        check(result, limit, how)
    except (ChildCrashed, ChildTimeout, CopyLimitExceeded) as exc:
        failure = f"[limit_cow] {exc}"
    else:
        return
    pytest.fail(failure, pytrace=False)
