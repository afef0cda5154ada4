"""Which of the pytest plugin's frames a failure report hides (a leaf: the plugin's entry
module and its work module both use it)."""

from __future__ import annotations

import pytest

__all__ = ["hide_frame"]


def hide_frame(excinfo: pytest.ExceptionInfo[BaseException]) -> bool:
    """Hide the plugin's frames, except under ``pytest.fail(pytrace=False)``.

    That message is the whole report: hiding every frame there only adds a "frames are hidden"
    line.
    """
    return not isinstance(excinfo.value, pytest.fail.Exception)
