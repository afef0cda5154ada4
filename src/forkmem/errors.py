"""forkmem's exceptions.

Every error forkmem raises derives from [`ForkmemError`][forkmem.ForkmemError] *and* from the
builtin a caller would naturally catch (``ProcessLookupError``, ``PermissionError``,
``ValueError``...), so ``except ProcessLookupError`` keeps working for code that never heard of
forkmem.
"""

from __future__ import annotations

__all__ = [
    "AccessDenied",
    "ChildCrashed",
    "ChildTimeout",
    "CopyLimitExceeded",
    "ForkmemError",
    "ForkmemWarning",
    "InvalidArgument",
    "MissingDependency",
    "NoSuchProcess",
    "ProcParseError",
    "UnsafeToFork",
    "UnsupportedPlatform",
    "UnsupportedRuntime",
    "WorkerLost",
]


class ForkmemError(Exception):
    """Base class of every exception raised by forkmem."""


class NoSuchProcess(ForkmemError, ProcessLookupError):
    """The process does not exist: never existed, already reaped, or a zombie.

    ``pid`` is the process asked about (``None`` when unknown).
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class AccessDenied(ForkmemError, PermissionError):
    """The caller may not read the process's memory files (another user's process).

    ``pid`` is the process asked about and ``path`` the file that refused (either may be ``None``).
    """

    def __init__(self, message: str, *, pid: int | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.pid = pid
        self.path = path


class UnsupportedPlatform(ForkmemError, NotImplementedError):
    """The feature needs something this operating system does not offer (e.g. ``/proc``)."""


class UnsupportedRuntime(ForkmemError, NotImplementedError):
    """The feature needs a Python runtime other than the running one (version, build, ABI)."""


class ProcParseError(ForkmemError, ValueError):
    """A kernel file (``/proc``, cgroup) had content forkmem could not parse.

    ``path`` names the file, so a truncated or garbled read is never a bare ``ValueError``.
    """

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


class InvalidArgument(ForkmemError, ValueError):
    """An argument passed to forkmem has a value it cannot use."""


class MissingDependency(ForkmemError, ImportError):
    """A feature needs an optional library that is not installed.

    ``extra`` names the forkmem extra that installs it (``pip install 'forkmem[extra]'``).
    """

    def __init__(self, feature: str, module: str, extra: str) -> None:
        super().__init__(
            f"{feature} needs {module}, which is not installed: pip install 'forkmem[{extra}]'",
            name=module,
        )
        self.extra = extra


class ChildCrashed(ForkmemError, ChildProcessError):
    """A forked child died without reporting back (signal, ``os._exit``, broken pipe).

    ``exitcode`` is the child's exit status, or ``-signal`` when a signal killed it.
    """

    def __init__(self, message: str, *, exitcode: int | None = None) -> None:
        super().__init__(message)
        self.exitcode = exitcode


class WorkerLost(ChildCrashed):
    """A pool worker died (``SIGKILL``, the OOM killer, ``os._exit``) before finishing a task.

    The task that worker was running fails with this error; the pool replaces the worker and
    keeps going. Also raised for tasks a `terminate()` cut short.
    ``pid`` is the lost worker (``None`` when no worker had started the task) and ``exitcode``
    its exit status (``-signal`` for a signal), as for [`ChildCrashed`][forkmem.ChildCrashed].
    """

    def __init__(
        self, message: str, *, pid: int | None = None, exitcode: int | None = None
    ) -> None:
        super().__init__(message, exitcode=exitcode)
        self.pid = pid

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only attributes survive pickling (a result sent back through a pipe).
        return (_rebuild_worker_lost, (str(self), self.pid, self.exitcode))


def _rebuild_worker_lost(message: str, pid: int | None, exitcode: int | None) -> WorkerLost:
    return WorkerLost(message, pid=pid, exitcode=exitcode)


class ChildTimeout(ForkmemError, TimeoutError):
    """A forked child did not finish in the allowed time; it has been killed."""


class CopyLimitExceeded(ForkmemError, AssertionError):
    """A child copied more of its parent's memory than the test allowed."""


class UnsafeToFork(ForkmemError, RuntimeError):
    """Forking now would hand workers something that cannot cross a fork (a running thread the
    app started while forkmem rehearsed it, a worker class a fork server cannot host)."""


class ForkmemWarning(UserWarning):
    """Warns of setups where copy-on-write sharing cannot work (e.g. the spawn start method)."""
