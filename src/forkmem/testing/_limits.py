"""Copy limits: ``max_copied="5 MiB"`` or a fraction of the parent's heap, and the failure text."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forkmem._units import format_bytes, parse_size
from forkmem.errors import CopyLimitExceeded, InvalidArgument
from forkmem.testing._child import ChildResult, parent_heap_size, run_forked

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["CopyLimit", "assert_shared"]

DEFAULT_LIMIT = "5 MiB"


@dataclass(frozen=True, slots=True)
class CopyLimit:
    """How much a child may copy: ``max_copied`` bytes, or ``max_fraction`` of the parent heap.

    Exactly one of the two is set. ``describe()`` says it the way the user wrote it.
    """

    max_copied: int | None = None
    max_fraction: float | None = None

    @classmethod
    def of(cls, max_copied: str | int | float | None, max_fraction: float | None) -> CopyLimit:
        """Validate user input (at most one of the two; ``"5 MiB"`` when neither is given)."""
        if max_copied is not None and max_fraction is not None:
            raise InvalidArgument("give max_copied or max_fraction, not both")
        if max_fraction is None:
            return cls(max_copied=parse_size(DEFAULT_LIMIT if max_copied is None else max_copied))
        if isinstance(max_fraction, bool) or not isinstance(max_fraction, (int, float)):
            raise InvalidArgument(f"max_fraction must be a number, not {max_fraction!r}")
        if not 0 < max_fraction <= 1:
            raise InvalidArgument(
                f"max_fraction is a share of the parent's heap, in (0, 1]: {max_fraction!r}"
            )
        return cls(max_fraction=float(max_fraction))

    def bytes_for(self, parent_heap: int | None) -> int:
        """The limit in bytes for a parent whose heap (anonymous RSS) is ``parent_heap``."""
        if self.max_copied is not None:
            return self.max_copied
        if not parent_heap:
            raise InvalidArgument(
                "max_fraction needs the parent's heap size, and /proc/self/status has none"
            )
        assert self.max_fraction is not None
        return int(self.max_fraction * parent_heap)

    def describe(self) -> str:
        """``"max_copied=5.0 MiB"`` or ``"max_fraction=0.05 of the parent heap"``."""
        if self.max_copied is not None:
            return f"max_copied={format_bytes(self.max_copied)}"
        return f"max_fraction={self.max_fraction:g} of the parent heap"


def failure_message(result: ChildResult, limit: int, how: CopyLimit) -> str:
    """The text of `CopyLimitExceeded`: numbers first, then the attribution."""
    lines = [
        f"forked child copied {format_bytes(result.copied)} of its parent's memory; "
        f"the limit is {format_bytes(limit)} ({how.describe()})",
    ]
    if result.parent_heap:
        lines.append(
            f"  parent heap (anonymous RSS at fork): {format_bytes(result.parent_heap)}; "
            f"copied = {100 * result.copied / result.parent_heap:.1f}% of it"
        )
    lines.append(
        f"  child Private_Dirty: {format_bytes(result.before.private_dirty)} before the test, "
        f"{format_bytes(result.after.private_dirty)} after"
    )
    if result.attribution is not None:
        lines.append("which objects were copied (from /proc/self/pagemap):")
        lines.extend("  " + line for line in result.attribution.format().splitlines())
    else:
        lines.append("(no attribution: /proc/self/pagemap was not readable in the child)")
    lines.append(
        "hint: a gc.collect() in the child writes to every object the parent did not freeze; "
        "gc.freeze() (or forkmem.frozen()) in the parent before forking prevents that"
    )
    return "\n".join(lines)


def check(result: ChildResult, limit: int, how: CopyLimit) -> ChildResult:
    """Raise `CopyLimitExceeded` when ``result.copied`` exceeds ``limit``."""
    if result.copied > limit:
        exc = CopyLimitExceeded(failure_message(result, limit, how))
        exc.result = result  # type: ignore[attr-defined]
        exc.limit = limit  # type: ignore[attr-defined]
        raise exc
    return result


def run_limited(
    fn: Callable[[], Any], how: CopyLimit, *, timeout: float
) -> tuple[ChildResult, int]:
    """Run ``fn`` in a child, attributing copies when it goes over; returns (result, limit)."""
    __tracebackhide__ = True
    limit = how.bytes_for(parent_heap_size())
    return run_forked(fn, (), {}, timeout=timeout, attribute=limit), limit


def assert_shared(
    fn: Callable[[], Any],
    *,
    max_copied: str | int | float | None = None,
    max_fraction: float | None = None,
    timeout: float = 60.0,
) -> ChildResult:
    """Run ``fn()`` in a forked child and fail if it copies more of the parent than allowed.

    The limit is ``max_copied`` (bytes or a size such as ``"5 MiB"``, the default) or
    ``max_fraction`` of the parent's heap (its anonymous RSS at fork time). Over the limit,
    raises `CopyLimitExceeded` (an ``AssertionError``) whose message gives the
    parent heap, the copied bytes, the limit and which objects were copied, and whose ``result``
    attribute is the [`ChildResult`][forkmem.testing.ChildResult]. Otherwise returns the
    [`ChildResult`][forkmem.testing.ChildResult]. Errors from ``fn`` and from the child come as in
    `run_in_child()`. Use ``functools.partial`` to pass arguments.
    """
    __tracebackhide__ = True
    how = CopyLimit.of(max_copied, max_fraction)
    result, limit = run_limited(fn, how, timeout=timeout)
    return check(result, limit, how)
