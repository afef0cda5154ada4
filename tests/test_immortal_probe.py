"""The runtime check behind warmup(immortalize=True): it probes the object header and the
interpreter's own INCREF/DECREF, and refuses what it cannot prove with UnsupportedRuntime.

The probe caches its answer and leaves a throwaway immortal object behind, so each test runs in
a forked child (run_forked) and fakes the part of the runtime it is about there.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import sysconfig
from typing import TYPE_CHECKING

import pytest

import forkmem
from _forking import run_forked
from _immortal_runtime import IMMORTAL_FLAGS, IMMORTAL_WORD, needs_immortal
from forkmem import _immortal
from forkmem import _object_header as header
from forkmem.errors import UnsupportedRuntime

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = [pytest.mark.linux_only, needs_immortal]


def _fresh_probe() -> None:
    header._layout = None


def _refusal() -> dict[str, object]:
    """After faking something in this child: the reason, and that warmup refused untouched."""
    _fresh_probe()
    reason = header.unsupported_reason()
    frozen = gc.get_freeze_count()
    try:
        forkmem.warmup(immortalize=True)
    except UnsupportedRuntime as exc:
        return {"reason": reason, "error": str(exc), "untouched": gc.get_freeze_count() == frozen}
    return {"reason": reason, "error": None, "untouched": False}


def test_probe_finds_the_runtimes_own_value() -> None:
    def child() -> list[object]:
        found = header.check_runtime()
        return [found.immortal, found.flags, header.hash_view() is not None]

    assert run_forked(child) == [IMMORTAL_WORD, IMMORTAL_FLAGS, True]


def test_set_immortal_agrees_with_the_probe_where_it_exists() -> None:
    if not hasattr(ctypes.pythonapi, "PyUnstable_SetImmortal"):
        pytest.skip("PyUnstable_SetImmortal arrived in CPython 3.15")

    def child() -> list[object]:
        view = header.check_runtime().view
        return list(header._runtime_immortal_value(view) or ())

    assert run_forked(child) == [IMMORTAL_WORD, IMMORTAL_FLAGS]


def _counted_values() -> None:
    # 3.12/3.13 count 3 << 30 up; every runtime counts a small positive value.
    value = 0x1234_5678 if sys.version_info >= (3, 14) else 3 << 30
    header._CANDIDATES = ((value, 0),)


def _disagreeing_set_immortal() -> None:
    header._runtime_immortal_value = lambda view: (0x9000_0000, 0)


def _unrecognised_header() -> None:
    header.address_view = lambda: None


def _debug_build() -> None:
    sys.gettotalrefcount = lambda: 0  # type: ignore[attr-defined]


def _free_threaded_build() -> None:
    real = sysconfig.get_config_var
    sysconfig.get_config_var = lambda name: 1 if name == "Py_GIL_DISABLED" else real(name)


@pytest.mark.parametrize(
    ("fake", "expected"),
    [
        (_counted_values, "no known immortal reference count"),
        (_disagreeing_set_immortal, "PyUnstable_SetImmortal leaves 0x90000000/0x0"),
        (_unrecognised_header, "object header"),
        (_debug_build, "debug builds"),
        (_free_threaded_build, "free-threaded"),
    ],
    ids=["counted-values", "set-immortal-disagrees", "header", "debug", "free-threaded"],
)
def test_what_the_probe_cannot_prove_is_refused(fake: Callable[[], None], expected: str) -> None:
    def child() -> dict[str, object]:
        fake()
        return _refusal()

    r = run_forked(child)
    assert expected in str(r["reason"])
    assert r["error"] == r["reason"]  # the same words reach the user
    assert r["untouched"]  # refused before the freeze or any write


def test_the_flag_the_eval_loop_reads_is_needed_from_3_14() -> None:
    if sys.version_info < (3, 14):
        pytest.skip("3.12/3.13 have no ob_flags")

    def child() -> list[object]:
        view = header.check_runtime().view
        # Without _Py_IMMORTAL_FLAGS the loop drops references it took over with an unchecked
        # DECREF: the count moves, and the probe must see it.
        return [
            header._left_alone(view, 3 << 30, 0),
            header._left_alone(view, 3 << 30, 1 << 16),
        ]

    assert run_forked(child) == [False, True]


def test_hash_view_off_when_the_hash_is_not_where_expected() -> None:
    def child() -> list[object]:
        header.HASH_WORD = 4  # the length field, not the hash
        header._hash_probed = False
        s = "".join(["not", "hashed", "yet"])
        hashed = _immortal._hash_unhashed(header.hash_view(), [s])
        return [header.hash_view() is None, hashed]

    # Without the view every str is hashed (cheap when cached), never a wrong word read.
    assert run_forked(child) == [True, 1]
