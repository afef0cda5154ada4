"""Argument checks shared by the freezing API and every integration (a leaf).

Each raises [`InvalidArgument`][forkmem.InvalidArgument] (also a ``ValueError``) naming the
argument the way the caller wrote it (``what``: ``"frozen(collect=...)"``,
``"AirflowOptions.warmup"``), so a bad option never surfaces as a traceback from deep inside.
"""

from __future__ import annotations

from forkmem.errors import InvalidArgument

__all__ = [
    "MAX_SECONDS",
    "check_bool",
    "check_duty_cycle",
    "check_seconds",
    "check_warmup_for_immortalize",
]


def check_bool(what: str, value: object, *, none_ok: bool = False) -> None:
    """``value`` must be True or False (or None, with ``none_ok``)."""
    if isinstance(value, bool) or (none_ok and value is None):
        return
    allowed = "True, False or None" if none_ok else "True or False"
    raise InvalidArgument(f"{what} must be {allowed}; got {value!r}")


def check_warmup_for_immortalize(owner: str, *, warmup: bool, immortalize: bool | None) -> None:
    """Immortalizing is a step of the warm-up: ``immortalize=True`` needs ``warmup=True``."""
    if immortalize and not warmup:
        raise InvalidArgument(f"{owner}(immortalize=True) needs warmup=True")


def check_duty_cycle(what: str, value: object) -> float:
    """A share of one CPU, ``0 < value <= 1``; returned as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise InvalidArgument(f"{what} must be in (0, 1]; got {value!r}")
    return float(value)


#: The longest wait a seconds option takes (a year): ``time.sleep()`` overflows far beyond it,
#: and ``inf`` would overflow at the first pause.
MAX_SECONDS = 366 * 24 * 3600.0


def check_seconds(what: str, value: float) -> float:
    """A positive, finite number of seconds, at most `MAX_SECONDS`."""
    if not 0 < value <= MAX_SECONDS:  # False for nan too
        raise InvalidArgument(
            f"{what} needs a positive number of seconds up to {MAX_SECONDS:g}, not {value}"
        )
    return value
