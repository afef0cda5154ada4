"""A fork hook registry: like ``os.register_at_fork``, but removable, inspectable and failure-safe.

forkmem registers one trampoline with `os.register_at_fork()` when this module is imported.
The trampoline runs the hooks registered with [`at_fork()`][forkmem.at_fork] in the stdlib's order
("before" hooks newest first, "after" hooks oldest first). A hook that raises (anything,
BaseExceptions included) is logged on the ``"forkmem.hooks"`` logger with its name, recorded for
[`hook_errors()`][forkmem.hook_errors], and the other hooks and the fork itself go on.

Thread safety without a lock in the child: registration replaces an immutable tuple under a lock;
the trampoline only reads the tuple (one atomic load), so it never waits on the lock. The child
also gets a fresh lock, in case another thread held it at the moment of the fork.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, TypeVar, overload

from forkmem import forkinfo
from forkmem._validate import check_bool
from forkmem.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "ForkHook",
    "HookError",
    "after_fork_in_child",
    "after_fork_in_parent",
    "at_fork",
    "before_fork",
    "fork_hooks",
    "hook_errors",
    "run_fork_hooks",
]

Phase = Literal["before", "after_in_parent", "after_in_child"]
_PHASES: tuple[str, ...] = ("before", "after_in_parent", "after_in_child")
_MAX_ERRORS = 100

_logger = logging.getLogger("forkmem.hooks")

HookFn = TypeVar("HookFn", bound="Callable[[], object]")


@dataclass(frozen=True, slots=True)
class HookError:
    """One failure of a fork hook, as recorded by the trampoline.

    The exception itself is not kept (its traceback would pin frames and objects); its type
    and message are.
    """

    hook: str
    """The hook's name (``ForkHook.name``)."""
    phase: str
    """``"before"``, ``"after_in_parent"`` or ``"after_in_child"``."""
    error_type: str
    """Qualified name of the exception class, e.g. ``"builtins.RuntimeError"``."""
    message: str
    """``str()`` of the exception."""
    pid: int
    """The process the hook ran in."""
    time: float
    """``time.time()`` when it failed."""


class ForkHook:
    """A registered set of fork callbacks; returned by [`at_fork()`][forkmem.at_fork].

    Call [`remove()`][forkmem.ForkHook.remove] to unregister it (idempotent). The callables take no
    arguments, like those of `os.register_at_fork()`.
    """

    __slots__ = ("__weakref__", "after_in_child", "after_in_parent", "before", "name")

    def __init__(
        self,
        name: str,
        before: Callable[[], object] | None,
        after_in_parent: Callable[[], object] | None,
        after_in_child: Callable[[], object] | None,
    ) -> None:
        self.name = name
        self.before = before
        self.after_in_parent = after_in_parent
        self.after_in_child = after_in_child

    @property
    def active(self) -> bool:
        """Whether the hook is still registered."""
        return self in _hooks

    def remove(self) -> None:
        """Unregister the hook; later forks no longer run it. Removing twice is harmless."""
        global _hooks
        with _lock:
            _hooks = tuple(h for h in _hooks if h is not self)

    def __repr__(self) -> str:
        phases = [p for p in _PHASES if getattr(self, p) is not None]
        state = "active" if self.active else "removed"
        return f"<ForkHook {self.name!r} {'/'.join(phases)} {state}>"


# The registry: an immutable tuple, replaced (never mutated) under _lock, read without it.
_hooks: tuple[ForkHook, ...] = ()
_lock = threading.Lock()
# The process _lock was made in: the registry's own record, not forkinfo's, because a C-forked
# child may call fork_info() (which records the fork) before run_fork_hooks().
_lock_pid = os.getpid()
_errors: collections.deque[HookError] = collections.deque(maxlen=_MAX_ERRORS)


def _callable_name(fn: Callable[[], object]) -> str:
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", None)
    if qualname is None:
        return repr(fn)
    return f"{module}.{qualname}" if module else str(qualname)


def _check(fn: object, what: str) -> None:
    if fn is not None and not callable(fn):
        raise InvalidArgument(f"at_fork({what}=...) needs a callable or None, got {fn!r}")


def at_fork(
    before: Callable[[], object] | None = None,
    after_in_parent: Callable[[], object] | None = None,
    after_in_child: Callable[[], object] | None = None,
    *,
    name: str | None = None,
) -> ForkHook:
    """Register callables to run around every ``os.fork()``; returns a removable `ForkHook`.

    ``before`` runs in the parent just before the fork, ``after_in_parent`` in the parent after
    it, ``after_in_child`` in the new child. Like `os.register_at_fork()`, "before" hooks run
    newest first and "after" hooks oldest first, and they fire for ``os.fork()``, ``pty.fork()``
    and multiprocessing's "fork" start method (not for ``subprocess`` or "spawn"). A raising hook
    is logged and recorded (see [`hook_errors()`][forkmem.hook_errors]); the fork and the other
    hooks proceed. That
    holds for ``BaseException`` too (``KeyboardInterrupt``, ``SystemExit``, ``GeneratorExit``):
    recorded and logged at ERROR like the others, never re-raised out of ``os.fork()`` (CPython
    drops any exception leaving a fork callback). [`run_fork_hooks()`][forkmem.run_fork_hooks]
    re-raises them once every hook of the phase has run.

    ``name`` identifies the hook in logs and [`hook_errors()`][forkmem.hook_errors]; it defaults to
    the qualified name of the first callable given.
    """
    _check(before, "before")
    _check(after_in_parent, "after_in_parent")
    _check(after_in_child, "after_in_child")
    first = next((f for f in (before, after_in_parent, after_in_child) if f is not None), None)
    if first is None:
        raise InvalidArgument(
            "at_fork() needs at least one of before, after_in_parent, after_in_child"
        )
    if name is not None and not isinstance(name, str):
        raise InvalidArgument(f"at_fork(name=...) must be a str, got {name!r}")
    hook = ForkHook(name or _callable_name(first), before, after_in_parent, after_in_child)
    global _hooks
    with _lock:
        _hooks = (*_hooks, hook)
    return hook


@overload
def _decorator(phase: str, fn: HookFn, name: str | None) -> HookFn: ...
@overload
def _decorator(phase: str, fn: None, name: str | None) -> Callable[[HookFn], HookFn]: ...
def _decorator(
    phase: str, fn: HookFn | None, name: str | None
) -> HookFn | Callable[[HookFn], HookFn]:
    def register(f: HookFn) -> HookFn:
        at_fork(**{phase: f}, name=name)
        return f

    return register if fn is None else register(fn)


@overload
def before_fork(fn: HookFn, /) -> HookFn: ...
@overload
def before_fork(*, name: str | None = None) -> Callable[[HookFn], HookFn]: ...
def before_fork(
    fn: HookFn | None = None, /, *, name: str | None = None
) -> HookFn | Callable[[HookFn], HookFn]:
    """Decorator: run ``fn`` in the parent before every fork.

    Use as ``@before_fork`` or ``@before_fork(name=...)``. The function is returned unchanged;
    find its [`ForkHook`][forkmem.ForkHook] in [`fork_hooks()`][forkmem.fork_hooks] to remove it.
    """
    return _decorator("before", fn, name)


@overload
def after_fork_in_parent(fn: HookFn, /) -> HookFn: ...
@overload
def after_fork_in_parent(*, name: str | None = None) -> Callable[[HookFn], HookFn]: ...
def after_fork_in_parent(
    fn: HookFn | None = None, /, *, name: str | None = None
) -> HookFn | Callable[[HookFn], HookFn]:
    """Decorator: run ``fn`` in the parent after every fork. Returns ``fn`` unchanged."""
    return _decorator("after_in_parent", fn, name)


@overload
def after_fork_in_child(fn: HookFn, /) -> HookFn: ...
@overload
def after_fork_in_child(*, name: str | None = None) -> Callable[[HookFn], HookFn]: ...
def after_fork_in_child(
    fn: HookFn | None = None, /, *, name: str | None = None
) -> HookFn | Callable[[HookFn], HookFn]:
    """Decorator: run ``fn`` in every new child right after the fork. Returns ``fn`` unchanged."""
    return _decorator("after_in_child", fn, name)


def fork_hooks() -> tuple[ForkHook, ...]:
    """The registered hooks, oldest first (the order "after" hooks run in)."""
    return _hooks


def hook_errors(*, clear: bool = False) -> tuple[HookError, ...]:
    """Failures of fork hooks in this process, oldest first (the last 100 are kept).

    A child inherits its parent's list as it was at the fork. ``clear=True`` empties the list
    while reading it: an error recorded meanwhile by a thread that forks is either returned by
    this call or kept for the next one, never dropped.
    """
    check_bool("hook_errors(clear=...)", clear)  # "no" is truthy: it would clear the record
    if not clear:
        return tuple(_errors.copy())  # one C call: a concurrent append cannot break the copy
    # Drain one entry at a time instead of copy-then-clear: each popleft() is atomic (the GIL,
    # or the deque's own lock on free-threaded builds), so nothing slips between a copy and a
    # clear. No lock is taken, so none can be held across a fork or wedge a child.
    drained: list[HookError] = []
    pop = _errors.popleft
    while True:
        try:
            drained.append(pop())
        except IndexError:
            return tuple(drained)


def _message(exc: BaseException) -> str:
    # An exception whose __str__ raises must not escape the except block below (the hooks
    # after it would be skipped).
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _run(phase: str) -> tuple[tuple[HookError, ...], BaseException | None]:
    """Run one phase's hooks; returns the failures and the first non-Exception raised, if any.

    Every hook runs whatever the ones before it raised, BaseExceptions included: a
    KeyboardInterrupt or SystemExit from one hook must not skip the others (a skipped
    after_in_child hook can leave a lock held or a connection shared in the child).
    """
    hooks = _hooks  # one atomic read: no lock on the fork path
    ordered = reversed(hooks) if phase == "before" else iter(hooks)
    failures: list[HookError] = []
    pending: BaseException | None = None
    for hook in ordered:
        fn = getattr(hook, phase)
        if fn is None:
            continue
        try:
            fn()
        except BaseException as exc:
            # A broken hook must never break the fork or starve the other hooks.
            err = HookError(
                hook=hook.name,
                phase=phase,
                error_type=f"{type(exc).__module__}.{type(exc).__qualname__}",
                message=_message(exc),
                pid=os.getpid(),
                time=time.time(),
            )
            _errors.append(err)
            failures.append(err)
            if pending is None and not isinstance(exc, Exception):
                pending = exc
            # A broken logging setup must not break the fork either.
            with contextlib.suppress(Exception):
                _logger.exception("fork hook %r failed in phase %s", hook.name, phase)
    return tuple(failures), pending


def _reset_in_child(*, via_hook: bool) -> None:
    global _lock, _lock_pid
    # Another thread may have held the registration lock at the instant of the fork; that
    # thread does not exist here, so the copy would stay locked forever.
    _lock = threading.Lock()
    _lock_pid = os.getpid()
    forkinfo.note_fork(via_hook=via_hook)


def run_fork_hooks(phase: Phase) -> tuple[HookError, ...]:
    """Run the registered hooks of one ``phase`` now; returns this run's failures.

    For servers that fork in C, where `os.register_at_fork()` callbacks never fire (uWSGI
    without ``--py-call-osafterfork``): call ``run_fork_hooks("after_in_child")`` from the
    server's own post-fork hook. In the "after_in_child" phase it also resets the registry's lock
    and records the fork for [`forkmem.fork_info()`][forkmem.fork_info], once per process.

    Every hook runs even when an earlier one raises. Exceptions are recorded and logged; the
    first ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
    ``SystemExit``, ``GeneratorExit``) is re-raised once every hook of the phase has run.
    """
    if phase not in _PHASES:
        raise InvalidArgument(f"phase must be one of {', '.join(_PHASES)}; got {phase!r}")
    if phase == "after_in_child" and _lock_pid != os.getpid():
        # via_hook says whether the os.register_at_fork callbacks fired: here they did not.
        _reset_in_child(via_hook=False)
    failures, pending = _run(phase)
    if pending is not None:
        # Called from Python code, so the caller can receive it: after every hook has run.
        raise pending
    return failures


# The trampolines never re-raise: CPython reports an exception escaping a fork callback as
# "unraisable" and drops it, and re-delivering a KeyboardInterrupt as a simulated SIGINT would
# be handled inside whichever fork callback runs next (asyncio's child reset, logging's lock
# release), breaking that library's state in the child. Recording and logging it is what
# reaches the user without harming the fork.
def _trampoline_before() -> None:
    _run("before")


def _trampoline_after_in_parent() -> None:
    _run("after_in_parent")


def _trampoline_after_in_child() -> None:
    _reset_in_child(via_hook=True)
    _run("after_in_child")


# Registered once, when this module is first imported (imports are serialized); children
# inherit the registration.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_trampoline_before,
        after_in_parent=_trampoline_after_in_parent,
        after_in_child=_trampoline_after_in_child,
    )
