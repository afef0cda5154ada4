"""hook_errors(clear=...) takes a bool: a string such as "no" used to clear the record."""

from __future__ import annotations

import pytest

import forkmem


def test_a_non_bool_clear_is_invalid_and_keeps_the_errors() -> None:
    def broken() -> None:
        raise RuntimeError("review: recorded")

    hook = forkmem.at_fork(after_in_parent=broken, name="review.broken")
    try:
        # The phase a fork runs, called directly: no fork from this multi-threaded test process.
        forkmem.run_fork_hooks("after_in_parent")
    finally:
        hook.remove()
    with pytest.raises(forkmem.InvalidArgument):
        forkmem.hook_errors(clear="no")  # type: ignore[arg-type]
    assert any(e.hook == "review.broken" for e in forkmem.hook_errors())
    forkmem.hook_errors(clear=True)
