"""Code packing: record the code a rehearsal runs, copy it together, repoint the functions.

Each test packs inside a forked child (tests/_forking.py), so the pytest process's own functions
are never repointed. The memory test measures a real grandchild's private pages.
"""

from __future__ import annotations

import functools
import inspect
import pickle
import sys
import types
from typing import Any

import pytest

import _immortal_runtime
from _forking import run_forked
from forkmem import _code_pack
from forkmem.testing import run_in_child


def hot(x: int) -> int:
    return x * 3 + 1


def cold(x: int) -> int:
    return x - 1


def make_adder(n: int) -> Any:
    def add(x: int) -> int:
        return x + n

    return add


def counter(limit: int) -> Any:
    yield from range(limit)


@functools.wraps(hot)
def wrapped(x: int) -> int:
    return hot(x) + 1


class Box:
    def value(self) -> int:
        return 7


def test_recorder_sees_what_ran_and_leaves_no_hook() -> None:
    def child() -> dict[str, Any]:
        with _code_pack.CodeRecorder() as recorder:
            hot(1)
            list(counter(2))
        seen = set(recorder.codes)
        monitoring: Any = getattr(sys, "monitoring", None)
        tools = [monitoring.get_tool(t) for t in range(6)] if monitoring else []
        return {
            "hot": id(hot.__code__) in seen,
            "generator": id(counter.__code__) in seen,
            "cold": id(cold.__code__) in seen,
            "tools": tools,
            "profile": sys.getprofile() is None,
            "reason": recorder.reason,
        }

    r = run_forked(child)
    assert r["reason"] is None
    assert r["hot"]
    assert r["generator"]
    assert not r["cold"]
    assert all(tool is None for tool in r["tools"])  # our monitoring tool id is free again
    assert r["profile"]


def test_pack_repoints_functions_and_keeps_their_behaviour() -> None:
    def child() -> dict[str, Any]:
        funcs = {"hot": hot, "cold": cold, "make_adder": make_adder, "wrapped": wrapped}
        funcs["value"] = Box.value
        before = {name: f.__code__ for name, f in funcs.items()}
        early = make_adder(1)  # made before the pack: its code is repointed too
        with _code_pack.CodeRecorder() as recorder:
            hot(1)
            make_adder(2)(3)
            early(1)
            wrapped(1)
            Box().value()
        report = _code_pack.pack(recorder.codes.values())
        late = make_adder(10)  # made after: from the packed parent's packed constant
        nested = [
            c
            for c in make_adder.__code__.co_consts
            if isinstance(c, types.CodeType) and c.co_name == "add"  # 3.14+: __annotate__ too
        ]
        return {
            "report": [report.codes, report.functions, report.skipped],
            "moved": {name: f.__code__ is not before[name] for name, f in funcs.items()},
            "equal": all(f.__code__ == before[name] for name, f in funcs.items()),
            "results": [hot(2), cold(2), early(5), late(5), wrapped(2), Box().value()],
            "nested_is_late": nested[0] is late.__code__ and early.__code__ is late.__code__,
            "wraps": wrapped.__wrapped__ is hot and wrapped.__name__ == "hot",
            "pickle": pickle.loads(pickle.dumps(hot)) is hot,
            "source": "x * 3 + 1" in inspect.getsource(hot),
            "originals": before["hot"] in _code_pack._originals,
        }

    r = run_forked(child)
    assert r["report"][0] >= 5
    assert r["report"][1] >= 5
    assert r["report"][2] == 0
    assert r["moved"] == {
        "hot": True, "cold": False, "make_adder": True, "wrapped": True, "value": True,
    }  # fmt: skip
    assert r["equal"]
    assert r["results"] == [7, 1, 6, 15, 8, 7]
    assert r["nested_is_late"]
    assert r["wraps"]
    assert r["pickle"]
    assert r["source"]
    assert r["originals"]  # kept alive: freed, they would be holes the workers allocate into


def test_frozen_functions_are_repointed_and_young_objects_stay_visible() -> None:
    def child() -> dict[str, Any]:
        import gc

        gc.freeze()  # hot() is frozen now, out of gc.get_objects()
        original = hot.__code__
        young = Box()
        with _code_pack.CodeRecorder() as recorder:
            hot(1)
        _code_pack.pack(recorder.codes.values())
        return {
            "moved": hot.__code__ is not original,
            "frozen": gc.get_freeze_count(),
            "young_visible": any(o is young for o in gc.get_objects()),
        }

    assert run_forked(child) == {"moved": True, "frozen": 0, "young_visible": True}


@pytest.mark.skipif(sys.version_info < (3, 12), reason="sys.monitoring arrived in 3.12")
def test_code_another_monitoring_tool_watches_is_left_alone() -> None:
    def child() -> dict[str, Any]:
        monitoring: Any = sys.monitoring  # type: ignore[attr-defined]
        tool = monitoring.DEBUGGER_ID
        monitoring.use_tool_id(tool, "a debugger")
        monitoring.set_local_events(tool, hot.__code__, monitoring.events.LINE)
        monitoring.register_callback(tool, monitoring.events.LINE, lambda *a: None)
        original, other = hot.__code__, cold.__code__
        with _code_pack.CodeRecorder() as recorder:
            hot(1)
            cold(1)
        report = _code_pack.pack(recorder.codes.values())
        return {
            "kept": hot.__code__ is original,
            "moved": cold.__code__ is not other,
            "skipped": report.skipped,
        }

    r = run_forked(child)
    assert r == {"kept": True, "moved": True, "skipped": 1}


SOURCE = """\
def f{i}(x):
    y = x + {i}
    for k in range(3):
        y += k * 2
    return y
"""


def _scattered(n: int) -> tuple[list[Any], list[bytes]]:
    """``n`` functions, each code object on a page of its own among kept same-size blocks: the
    layout imports leave behind."""
    funcs: list[Any] = []
    junk: list[bytes] = []
    for i in range(n):
        namespace: dict[str, Any] = {}
        exec(SOURCE.format(i=i), namespace)
        funcs.append(namespace[f"f{i}"])
        size = sys.getsizeof(funcs[-1].__code__)
        junk.extend(bytes(size - sys.getsizeof(b"")) for _ in range(4096 // size + 1))
    return funcs, junk


def _child_copies(pack: bool) -> dict[str, Any]:
    funcs, _junk = _scattered(1500)
    for f in funcs:  # the rehearsal's first round
        f(1)
    with _code_pack.CodeRecorder() as recorder:
        for f in funcs:
            f(1)
    report = _code_pack.pack(recorder.codes.values()) if pack else None
    for _ in range(8):
        for f in funcs:
            f(1)

    def worker() -> None:
        for _ in range(20):  # each call writes its code object (its reference count at least)
            for f in funcs:
                f(2)

    copied = run_in_child(worker).copied
    return {
        "copied": copied,
        "pages": None if report is None else [report.pages_before, report.pages_after],
    }


def test_a_child_running_packed_code_copies_far_fewer_pages() -> None:
    plain = run_forked(lambda: _child_copies(False), timeout=120)
    packed = run_forked(lambda: _child_copies(True), timeout=120)
    before, after = packed["pages"]
    assert before >= 1200  # scattered: about one page per code object
    assert after <= before / 4
    # ~1500 pages (6 MiB) copied when scattered; packed, about a tenth of that.
    assert plain["copied"] > 1000 * 4096, plain
    assert packed["copied"] < plain["copied"] / 3, (plain, packed)


def test_code_packed_once_is_not_copied_again() -> None:
    def child() -> dict[str, Any]:
        with _code_pack.CodeRecorder() as recorder:
            hot(1)
        first = _code_pack.pack(recorder.codes.values())
        copy = hot.__code__
        with _code_pack.CodeRecorder() as recorder:
            hot(1)
        again = _code_pack.pack(recorder.codes.values())
        return {
            "first": first.codes >= 1,
            "again": [again.codes, again.functions],
            "kept": hot.__code__ is copy,
        }

    assert run_forked(child) == {"first": True, "again": [0, 0], "kept": True}


def _mold_copies(refreeze: bool) -> dict[str, Any]:
    """A refork in small: this process (the master) builds a heap, makes it immortal and
    freezes it; its child (the mold) runs some functions, then either packs their code with
    ``refreeze`` or does what plain pack() leaves to a following warm-up (unfreeze, collect,
    freeze)."""
    import gc

    from forkmem._immortal import immortalize

    heap = [{"n": i, "items": [i, (i, "x")]} for i in range(150_000)]
    funcs, _junk = _scattered(300)
    gc.collect()
    immortalize(gc.get_objects())
    gc.freeze()

    def mold() -> dict[str, Any]:
        original = funcs[0].__code__
        with _code_pack.CodeRecorder() as recorder:
            for f in funcs:
                f(1)
        gc.collect()  # the mold's own garbage
        frozen = gc.get_freeze_count()
        if refreeze:
            report = _code_pack.pack(recorder.codes.values(), refreeze=True)
            immortalize(list(report.copies))
        else:
            _code_pack.pack(recorder.codes.values())
            gc.collect()
            gc.freeze()
        return {
            "moved": funcs[0].__code__ is not original and funcs[0](1) == original_result,
            "still_frozen": gc.get_freeze_count() >= frozen,
            "collector_on": gc.isenabled(),
        }

    original_result = funcs[0](1)
    result = run_in_child(mold, timeout=120)
    assert len(heap) == 150_000
    return {"copied": result.copied, **result.value}


@pytest.mark.skipif(
    not _immortal_runtime.IMMORTAL_SUPPORTED, reason="the mold packs where the master is immortal"
)
def test_a_mold_packing_with_refreeze_leaves_the_masters_frozen_heap_shared() -> None:
    collected = run_forked(lambda: _mold_copies(False), timeout=180)
    refrozen = run_forked(lambda: _mold_copies(True), timeout=180)
    for run in (collected, refrozen):
        assert run["moved"], run
        assert run["collector_on"], run
    assert refrozen["still_frozen"], refrozen
    # The collection over the unfrozen heap writes every object's header: the ~40 MiB heap is
    # copied. Refreezing costs the recorded code's pages, the functions' and the list of all
    # objects the search for functions makes (~5 MiB in all here).
    assert collected["copied"] > 20 * 1024 * 1024, collected
    assert refrozen["copied"] < collected["copied"] / 4, (collected, refrozen)
