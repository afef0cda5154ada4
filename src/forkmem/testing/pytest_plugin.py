"""forkmem's pytest plugin (auto-loaded through the ``pytest11`` entry point).

It adds the ``cow`` fixture and the ``limit_cow`` marker. pytest loads it in every session where
forkmem is installed, so this module only registers names: the work (forking, pickling, the
object walk) is imported when a test asks for it, and unmarked tests run exactly as before.
Disable it with ``-p no:forkmem``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from forkmem.testing._traceback import hide_frame

if TYPE_CHECKING:
    from forkmem.testing._plugin import CowFixture

__all__ = ["cow", "pytest_configure", "pytest_pyfunc_call"]


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``limit_cow`` marker."""
    config.addinivalue_line(
        "markers",
        "limit_cow(limit='5 MiB', *, fraction=None, timeout=60): run the test in a forked child "
        "and fail when it copies more of the parent's memory than the limit (forkmem)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run tests marked ``limit_cow`` in a forked child; leave every other test alone."""
    marker = pyfuncitem.get_closest_marker("limit_cow")
    if marker is None:
        return None
    __tracebackhide__ = hide_frame
    from forkmem.testing._plugin import run_marked

    run_marked(pyfuncitem, marker)
    return True


@pytest.fixture
def cow() -> CowFixture:
    """Fork helpers for the test: ``cow.run(fn)``, ``cow.baseline()``, ``cow.assert_shared(fn)``.

    Skips the test where ``os.fork`` or ``/proc`` is missing.
    """
    from forkmem.testing._plugin import CowFixture, skip_if_unsupported

    skip_if_unsupported()
    return CowFixture()
