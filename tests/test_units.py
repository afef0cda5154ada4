from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import forkmem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("512", 512),
        ("5 MiB", 5 * 1024**2),
        ("5MiB", 5 * 1024**2),
        ("5m", 5 * 1024**2),
        ("1.5GB", 1_500_000_000),
        ("2 KiB", 2048),
        ("3 kb", 3000),
        (" 1 TiB ", 1024**4),
        (4096, 4096),
        (1.9, 1),
    ],
)
def test_parse_size(text: str | int | float, expected: int) -> None:
    assert forkmem.parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "MiB", "5 parsecs", "-1 MiB", "1e3", -1, float("nan"), True])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(forkmem.InvalidArgument) as info:
        forkmem.parse_size(bad)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_parse_size_rejects_a_size_too_large_for_a_float() -> None:
    with pytest.raises(forkmem.InvalidArgument, match="too large"):
        forkmem.parse_size("9" * 400 + " MiB")


def test_parse_size_rejects_other_types() -> None:
    with pytest.raises(forkmem.InvalidArgument, match="list"):
        forkmem.parse_size([5])  # type: ignore[arg-type]


@given(st.text(max_size=30))
def test_parse_size_never_raises_anything_else(text: str) -> None:
    with contextlib.suppress(forkmem.InvalidArgument):
        assert forkmem.parse_size(text) >= 0


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (None, "n/a"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (3_500_000, "3.3 MiB"),
        (-2048, "-2.0 KiB"),
        (5 * 1024**5, "5120.0 TiB"),
    ],
)
def test_format_bytes(n: int | None, text: str) -> None:
    assert forkmem.format_bytes(n) == text


@given(st.integers(min_value=0, max_value=2**60))
def test_format_roundtrip_is_close(n: int) -> None:
    parsed = forkmem.parse_size(forkmem.format_bytes(n))
    assert abs(parsed - n) <= max(0.06 * n, 1)
