from __future__ import annotations

import pytest

import forkmem
from forkmem import errors

BUILTIN = {
    "NoSuchProcess": ProcessLookupError,
    "AccessDenied": PermissionError,
    "UnsupportedPlatform": NotImplementedError,
    "UnsupportedRuntime": NotImplementedError,
    "ProcParseError": ValueError,
    "InvalidArgument": ValueError,
    "ChildCrashed": ChildProcessError,
    "ChildTimeout": TimeoutError,
    "CopyLimitExceeded": AssertionError,
}


@pytest.mark.parametrize(("name", "builtin"), sorted(BUILTIN.items()))
def test_each_error_is_a_forkmem_error_and_its_builtin(name: str, builtin: type) -> None:
    cls = getattr(forkmem, name)
    assert issubclass(cls, forkmem.ForkmemError)
    assert issubclass(cls, builtin)


def test_every_error_class_is_exported() -> None:
    for name in errors.__all__:
        assert getattr(forkmem, name) is getattr(errors, name)
        assert name in forkmem.__all__


def test_attributes_survive() -> None:
    exc = forkmem.NoSuchProcess("pid 5 is gone", pid=5)
    assert exc.pid == 5
    assert str(exc) == "pid 5 is gone"
    denied = forkmem.AccessDenied("no", pid=1, path="/proc/1/smaps_rollup")
    assert (denied.pid, denied.path) == (1, "/proc/1/smaps_rollup")
    parse = forkmem.ProcParseError("line 3 is not 'Key: value'", path="/proc/1/status")
    assert parse.path == "/proc/1/status"
    assert str(parse).startswith("/proc/1/status: ")
    crashed = forkmem.ChildCrashed("killed by SIGSEGV", exitcode=-11)
    assert crashed.exitcode == -11


def test_forkmem_warning_is_a_user_warning() -> None:
    assert issubclass(forkmem.ForkmemWarning, UserWarning)
