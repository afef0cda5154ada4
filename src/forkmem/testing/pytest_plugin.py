"""forkmem's pytest plugin (auto-loaded through the ``pytest11`` entry point)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "limit_cow(limit=None, *, fraction=None): run the test in a forked child and fail when it "
        "copies more of the parent's memory than the limit",
    )
