"""Byte sizes: parse ``"5 MiB"`` and format byte counts for humans."""

from __future__ import annotations

from forkmem.errors import InvalidArgument

__all__ = ["format_bytes", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1000,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1000**3,
    "gib": 1024**3,
    "t": 1024**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_SIZE_RE = r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([a-zA-Z]*)\s*$"


def parse_size(value: str | int | float) -> int:
    """Return a size in bytes.

    Accepts a non-negative number of bytes or a string such as ``"5 MiB"``, ``"512k"`` or
    ``"1.5GB"`` (``KiB``/``MiB``/``GiB`` and bare ``K``/``M``/``G`` are powers of 1024,
    ``KB``/``MB``/``GB`` powers of 1000). Raises [`InvalidArgument`][forkmem.InvalidArgument]
    otherwise.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"a size must be a number of bytes or a string, not {value!r}")
    if isinstance(value, (int, float)):
        if value != value or value < 0 or value == float("inf"):
            raise InvalidArgument(f"a size must be a finite, non-negative number, not {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise InvalidArgument(
            f"a size must be a number of bytes or a string like '5 MiB', not {type(value).__name__}"
        )
    # Lazy: format_bytes() is on `forkmem bytecode`'s path, which never needs re (~5 ms of a
    # fresh process with the enum it loads); re caches the compiled pattern.
    import re

    match = re.match(_SIZE_RE, value)
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InvalidArgument(
            f"cannot read {value!r} as a size; write it like '512 KiB' or '5 MiB'"
        )
    size = float(match.group(1)) * _UNITS[unit]
    if size == float("inf"):  # a digit string past 1e308: int() would raise OverflowError
        raise InvalidArgument(f"size {value[:40]!r}... is too large")
    return int(size)


def format_bytes(n: int | float | None) -> str:
    """Format a byte count with a binary unit, e.g. ``format_bytes(3_500_000) == '3.3 MiB'``."""
    if n is None:
        return "n/a"
    sign = "-" if n < 0 else ""
    size = float(abs(n))
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{sign}{int(size)} {unit}" if unit == "B" else f"{sign}{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
