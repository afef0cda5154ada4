"""The one pid validator (a leaf: the command line imports it without the result types)."""

from __future__ import annotations

import os

from forkmem.errors import InvalidArgument

__all__ = ["PID_MAX", "check_pid"]

PID_MAX = 2**31 - 1


def check_pid(pid: object, *, default_self: bool = True) -> int:
    """The one pid validator of every public entry point: a positive int that fits a pid_t.

    ``None`` means this process unless ``default_self`` is false; anything else that is not
    such an int raises [`InvalidArgument`][forkmem.InvalidArgument].
    """
    if pid is None and default_self:
        return os.getpid()
    if isinstance(pid, bool) or not isinstance(pid, int):
        allowed = "an int or None" if default_self else "an int"
        raise InvalidArgument(f"pid must be {allowed}, not {type(pid).__name__}")
    if not 0 < pid <= PID_MAX:
        # Never str() the int itself: above 4300 digits that raises ValueError.
        shown = str(pid) if pid.bit_length() <= 64 else f"a {pid.bit_length()}-bit int"
        raise InvalidArgument(f"pid must be a positive int of at most {PID_MAX}, not {shown}")
    return pid
