"""Helpers for tests that assert copy-on-write behaviour.

``run_in_child`` forks and measures a child, ``assert_shared`` fails a test when the child
copies too much of its parent, ``copied_objects`` names the objects on the copied pages. The
pytest plugin (fixture ``cow``, marker ``limit_cow``) lives in `forkmem.testing.pytest_plugin`.

pytest imports this package in every session (for the plugin), so names load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from forkmem.testing._attribution import Attribution, HolderShare, TypeShare, copied_objects
    from forkmem.testing._child import ChildResult, ChildTraceback, run_in_child
    from forkmem.testing._limits import CopyLimit, assert_shared
    from forkmem.testing._pagemap import PageSnapshot, page_snapshot

__all__ = [
    "Attribution",
    "ChildResult",
    "ChildTraceback",
    "CopyLimit",
    "HolderShare",
    "PageSnapshot",
    "TypeShare",
    "assert_shared",
    "copied_objects",
    "page_snapshot",
    "run_in_child",
]

_HOME = {
    "Attribution": "_attribution",
    "HolderShare": "_attribution",
    "TypeShare": "_attribution",
    "copied_objects": "_attribution",
    "ChildResult": "_child",
    "ChildTraceback": "_child",
    "run_in_child": "_child",
    "CopyLimit": "_limits",
    "assert_shared": "_limits",
    "PageSnapshot": "_pagemap",
    "page_snapshot": "_pagemap",
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'forkmem.testing' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"forkmem.testing.{home}"), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
