"""assert_shared and CopyLimit: limits in bytes or as a fraction of the parent heap."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import pytest

from forkmem import CopyLimitExceeded, InvalidArgument
from forkmem.testing import ChildResult, CopyLimit, assert_shared

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.linux_only

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def heap() -> Iterator[list[list[int]]]:
    """~25 MiB of small GC-tracked containers that a full collection in a child would touch."""
    data = [[i] for i in range(250_000)]
    yield data
    del data


@pytest.fixture
def frozen_heap(heap: list[list[int]]) -> Iterator[list[list[int]]]:
    gc.collect()
    gc.freeze()
    try:
        yield heap
    finally:
        gc.unfreeze()


def test_frozen_heap_survives_a_collecting_child(frozen_heap: list[list[int]]) -> None:
    result = assert_shared(gc.collect, max_copied="5 MiB")
    assert isinstance(result, ChildResult)
    assert result.copied < 5 * MiB


def test_unfrozen_heap_fails_with_the_numbers(heap: list[list[int]]) -> None:
    with pytest.raises(CopyLimitExceeded) as info:
        assert_shared(gc.collect, max_copied="5 MiB")
    exc = info.value
    assert isinstance(exc, AssertionError)
    message = str(exc)
    assert "the limit is 5.0 MiB (max_copied=5.0 MiB)" in message
    assert "parent heap (anonymous RSS at fork)" in message
    assert "child Private_Dirty" in message
    assert "which objects were copied" in message
    result: ChildResult = exc.result  # type: ignore[attr-defined]
    assert result.copied > 5 * MiB
    assert exc.limit == 5 * MiB  # type: ignore[attr-defined]
    assert result.attribution is not None
    assert result.attribution.types[0].type_name == "list"


def test_fraction_of_the_parent_heap(heap: list[list[int]]) -> None:
    with pytest.raises(CopyLimitExceeded, match=r"max_fraction=0.01 of the parent heap"):
        assert_shared(gc.collect, max_fraction=0.01)
    result = assert_shared(lambda: None, max_fraction=0.5)
    assert result.parent_heap is not None
    assert result.copied < 0.5 * result.parent_heap


def test_default_limit_is_5_mib() -> None:
    assert CopyLimit.of(None, None) == CopyLimit(max_copied=5 * MiB)
    assert CopyLimit.of(None, 0.25).bytes_for(1000) == 250


@pytest.mark.parametrize(
    ("max_copied", "max_fraction", "match"),
    [
        ("5 MiB", 0.1, "not both"),
        ("lots", None, "cannot read"),
        (-1, None, "non-negative"),
        (None, 0, r"in \(0, 1\]"),
        (None, 1.5, r"in \(0, 1\]"),
        (None, "half", "must be a number"),
        (None, True, "must be a number"),
    ],
)
def test_bad_limits_are_invalid_argument(
    max_copied: object, max_fraction: object, match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        assert_shared(lambda: None, max_copied=max_copied, max_fraction=max_fraction)  # type: ignore[arg-type]


def test_errors_in_fn_propagate() -> None:
    def fail() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        assert_shared(fail)
