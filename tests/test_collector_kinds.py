"""Every path that depends on the probed collector kind, fed each answer.

CPython 3.14.0-3.14.4 ran an incremental collector (gc.freeze() walks the heap there) and
free-threaded builds have no generations; neither can be installed on the test machines, so
these tests feed forkmem's probe the answers such interpreters give and check what follows.
The probe itself is checked against a stand-in ``gc`` module that behaves like each collector.
"""

from __future__ import annotations

import gc
import warnings
from typing import TYPE_CHECKING

import pytest

import forkmem
from _forking import run_forked
from forkmem import doctor, freeze, gcinfo

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.linux_only

KINDS = ["generational", "incremental", "free-threaded"]


class _FakeGc:
    """The two calls the probe makes, answering like one collector design."""

    def __init__(self, *, keeps_threshold2: bool) -> None:
        self.thresholds = (2000, 10, 0)
        self.keeps_threshold2 = keeps_threshold2

    def get_threshold(self) -> tuple[int, int, int]:
        return self.thresholds

    def set_threshold(self, t0: int, t1: int = 0, t2: int = 0) -> None:
        # The incremental collector reports 0 for the third threshold whatever it is given.
        self.thresholds = (t0, t1, t2 if self.keeps_threshold2 else 0)


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    thresholds = gc.get_threshold()
    monkeypatch.setattr(gcinfo, "_kind", None)
    yield
    gc.set_threshold(*thresholds)
    gc.unfreeze()
    freeze._pinned = False


def _feed(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    monkeypatch.setattr(gcinfo, "_kind", kind)


@pytest.mark.parametrize(("keeps", "expected"), [(True, "generational"), (False, "incremental")])
def test_probe_tells_the_collectors_apart(
    monkeypatch: pytest.MonkeyPatch, keeps: bool, expected: str
) -> None:
    fake = _FakeGc(keeps_threshold2=keeps)
    monkeypatch.setattr(gcinfo, "gc", fake)
    monkeypatch.setattr(gcinfo, "_free_threaded_build", lambda: False)
    assert gcinfo.collector_kind() == expected
    assert fake.thresholds == (2000, 10, 0)  # the probe put the caller's thresholds back


def test_probe_sees_a_free_threaded_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gcinfo, "_free_threaded_build", lambda: True)
    assert gcinfo.collector_kind() == "free-threaded"


@pytest.mark.parametrize("kind", KINDS)
def test_gc_info_reports_the_kind_and_the_freeze_cost(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    _feed(monkeypatch, kind)
    info = forkmem.gc_info()
    assert info.collector == kind
    assert info.freeze_is_constant_time is (kind == "generational")


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_reports_the_kind(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    _feed(monkeypatch, kind)
    with forkmem.frozen() as report:
        assert report.collector == kind


@pytest.mark.parametrize("kind", KINDS)
def test_freeze_around_fork_warns_unless_generational(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    _feed(monkeypatch, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        forkmem.freeze_around_fork("young").remove()
    messages = [str(w.message) for w in caught if issubclass(w.category, forkmem.ForkmemWarning)]
    if kind == "generational":
        assert messages == []
    else:
        assert len(messages) == 1
        assert kind in messages[0]
        assert "O(heap)" in messages[0]


@pytest.mark.parametrize("kind", KINDS)
def test_young_strategy_collects_per_collector(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    _feed(monkeypatch, kind)
    calls: list[int] = []
    real_collect = gc.collect

    def recording_collect(generation: int = 2) -> int:
        calls.append(generation)
        return real_collect(generation)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", forkmem.ForkmemWarning)
        handle = forkmem.freeze_around_fork("young")
    monkeypatch.setattr(gc, "collect", recording_collect)
    try:
        inherited = gc.get_freeze_count()
        assert run_forked(gc.get_freeze_count) > inherited  # the child froze what it inherited
    finally:
        handle.remove()
    assert handle.forks == 1
    if kind == "generational":
        # CPython's full-collection rule is replayed: the old generation gets counted.
        assert handle._long_lived_total != 0
    else:
        # Elsewhere "young" is the collector's own young collection, nothing replayed.
        assert calls == [1]
        assert handle._long_lived_total == 0
        assert handle.full_collections == 0


@pytest.mark.parametrize("kind", KINDS)
def test_doctor_advice_follows_the_kind(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    _feed(monkeypatch, kind)
    finding = doctor._gc()
    assert finding.data["collector"] == kind
    if kind == "generational":
        assert "O(1)" in finding.advice
    else:
        assert "walks the heap" in finding.advice
        assert "never per fork" in finding.advice
