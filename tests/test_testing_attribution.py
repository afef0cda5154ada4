"""Attribution: which objects sit on the pages a forked child copied (/proc/self/pagemap)."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import pytest

from _lazy_module import lazy_module
from forkmem import InvalidArgument
from forkmem.testing import Attribution, copied_objects, page_snapshot, run_in_child

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.linux_only

MiB = 1024 * 1024


def _build(target: int) -> tuple[list[dict[str, object]], list[tuple[object, ...]]]:
    """A list of dicts and a list of tuples, each about ``target`` bytes (sys.getsizeof).

    Attribution works per page: objects of the allocator size class of a dict (64 bytes, e.g.
    10-character strings) would share its pages and its blame, so the dicts hold numbers.
    """
    dicts: list[dict[str, object]] = []
    size = 0
    while size < target:
        i = len(dicts)
        d = {"id": i + 1000, "score": i / 7}
        dicts.append(d)
        size += sys.getsizeof(d) + sys.getsizeof(d["id"]) + sys.getsizeof(d["score"])
    tuples: list[tuple[object, ...]] = []
    size = 0
    while size < target:
        i = len(tuples)
        t = (i + 1000, f"item-{i}", float(i))
        tuples.append(t)
        size += sys.getsizeof(t) + sum(sys.getsizeof(x) for x in t)
    return dicts, tuples


def test_pages_are_shared_after_fork_until_written() -> None:
    """The kernel behaviour the attribution relies on (bit 56 of pagemap)."""
    block = bytearray(8 * MiB)
    block[::4096] = b"\1" * (len(block) // 4096)

    def look() -> tuple[int, int]:
        snap = page_snapshot()
        shared_before = snap.shared_pages
        block[::4096] = b"\2" * (len(block) // 4096)
        attribution = copied_objects(since=snap)
        return shared_before, attribution.copied_pages

    shared_before, copied = run_in_child(look).value
    assert shared_before * 4096 >= 8 * MiB  # fresh child: the parent's pages are all shared
    assert copied * 4096 >= 8 * MiB  # after writing they are its own copies


def test_touching_only_the_dicts_blames_dicts() -> None:
    dicts, tuples = _build(50 * MiB)

    def touch_dicts() -> None:
        for d in dicts:
            d["seen"] = True

    result = run_in_child(touch_dicts, attribution=True)
    attribution = result.attribution
    assert isinstance(attribution, Attribution)
    assert attribution.copied >= 20 * MiB
    top = attribution.types[0]
    assert top.type_name == "dict"
    assert top.copied >= 0.7 * attribution.copied, attribution.format()
    assert top.objects >= 0.9 * len(dicts)
    assert top.holders[0][0] == "test_touching_only_the_dicts_blames_dicts() local dicts"
    tuple_bytes = sum(s.copied for s in attribution.types if s.type_name == "tuple")
    assert tuple_bytes < 0.02 * attribution.copied
    assert attribution.holders[0].holder.endswith("local dicts")
    assert "dict" in attribution.format()
    assert len(tuples) > 0


def test_without_attribution_none_is_computed() -> None:
    assert run_in_child(lambda: None).attribution is None


def test_copied_objects_without_since_counts_new_objects_too() -> None:
    def allocate() -> tuple[int, list[str]]:
        keep = [bytearray(4096) for _ in range(5000)]
        attribution = copied_objects()
        names = [share.type_name for share in attribution.types[:3]]
        del keep
        return attribution.copied_pages, names

    pages, names = run_in_child(allocate).value
    assert pages * 4096 >= 20 * MiB
    assert "bytearray" in names


def test_snapshot_from_another_process_is_rejected() -> None:
    snap = page_snapshot()
    with pytest.raises(InvalidArgument, match="taken in process"):
        run_in_child(copied_objects, since=snap)
    assert snap.pid == os.getpid()


def test_since_must_be_a_snapshot() -> None:
    with pytest.raises(InvalidArgument, match="PageSnapshot"):
        copied_objects(since=3)  # type: ignore[arg-type]


def test_attribution_does_not_execute_lazily_loaded_modules(tmp_path: Path) -> None:
    # importlib.util.LazyLoader runs a module on its first attribute access: the walk must not.
    with lazy_module(tmp_path, "lazy_attr_fm") as (_module, _src, marker):
        assert run_in_child(lambda: None, attribution=True).attribution is not None
        assert not marker.exists(), "the lazy module was executed in the child"
