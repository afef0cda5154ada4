"""gc_info(): the collector's kind and state, read from the running interpreter."""

from __future__ import annotations

import gc
import sys
import sysconfig
from typing import TYPE_CHECKING

import pytest

import forkmem
from forkmem import gcinfo

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture(autouse=True)
def _restore_gc() -> Iterator[None]:
    thresholds = gc.get_threshold()
    enabled = gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    if enabled:
        gc.enable()
    else:
        gc.disable()


def test_collector_kind_of_this_build() -> None:
    info = forkmem.gc_info()
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        assert info.collector == "free-threaded"
    elif sys.version_info < (3, 14):
        # 3.10-3.13 default builds all run the three-generation collector.
        assert info.collector == "generational"
        assert info.freeze_is_constant_time
    assert info.collector in ("generational", "incremental", "free-threaded")


def test_thresholds_counts_and_enabled_mirror_the_gc_module() -> None:
    gc.set_threshold(1234, 7, 9)
    gc.disable()
    info = forkmem.gc_info()
    assert info.thresholds == (1234, 7, 9)
    assert info.enabled is False
    assert len(info.counts) == len(gc.get_count())
    gc.enable()
    assert forkmem.gc_info().enabled is True


def test_freeze_count_follows_gc_freeze() -> None:
    gc.unfreeze()
    assert forkmem.gc_info().freeze_count == 0
    gc.freeze()
    assert forkmem.gc_info().freeze_count > 0
    gc.unfreeze()
    assert forkmem.gc_info().freeze_count == 0


def test_immortal_objects_from_pep_683_on() -> None:
    assert forkmem.gc_info().immortal_objects is (sys.version_info >= (3, 12))


def test_gil_enabled_on_default_builds() -> None:
    if not sysconfig.get_config_var("Py_GIL_DISABLED"):
        assert forkmem.gc_info().gil_enabled is True


def test_threshold_probe_keeps_the_callers_thresholds() -> None:
    if gcinfo.collector_kind() != "generational":
        pytest.skip("the probe's answer differs on other collectors")
    gc.set_threshold(1500, 11, 0)  # a generational collector with threshold2 = 0
    assert gcinfo._threshold2_is_ignored() is False
    assert gc.get_threshold() == (1500, 11, 0)
