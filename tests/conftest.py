"""Shared test configuration."""

from __future__ import annotations

import sys

import pytest

collect_ignore_glob: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Tests that fork and read /proc only make sense on Linux; say so instead of failing.
    if sys.platform.startswith("linux"):
        return
    skip = pytest.mark.skip(reason="forkmem's kernel-level tests need Linux /proc")
    for item in items:
        if "linux_only" in item.keywords:
            item.add_marker(skip)
