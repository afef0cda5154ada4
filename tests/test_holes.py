"""Allocator hole filling: pymalloc's free blocks and glibc's free chunks, filled in the parent so
a forked child allocates in new pages. Each test runs in a forked child (the fillers stay
allocated for the life of the process)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

import pytest

import forkmem
from _forking import run_forked
from forkmem import _holes
from forkmem.testing import run_in_child

POOL = 16384
LINUX_GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None


def _with_holes(size: int, count: int, every: int) -> tuple[list[bytes], list[bytes]]:
    """``count`` bytes objects of ``size`` bytes; every ``every``-th freed again (the holes)."""
    objects = [bytes(size - sys.getsizeof(b"")) for _ in range(count)]
    kept = [o for i, o in enumerate(objects) if i % every]
    freed = objects[::every]
    del objects
    return kept, freed


def _object(size: int) -> object:
    """A new object of one ``size``-byte block: object() (16), a float (32), else bytes."""
    if size == 16:
        return object()
    if size == 32:
        return float("0.25")
    return bytes(size - sys.getsizeof(b""))


@pytest.mark.parametrize("size", [16, 32, 64, 96])
def test_pymalloc_holes_are_filled_and_new_objects_start_fresh_pools(size: int) -> None:
    def child() -> dict[str, Any]:
        objects = [_object(size) for _ in range(40000)]
        freed = objects[::4]
        del objects[::4]
        pools = {id(o) & ~(POOL - 1) for o in objects}
        freed.clear()  # ~10,000 free blocks spread over every pool
        report = _holes.fill_holes()
        new = [_object(size) for _ in range(200)]
        return {
            "layout": _holes.pymalloc_layout(),
            "blocks": report.blocks,
            "in_old_pools": sum((id(o) & ~(POOL - 1)) in pools for o in new),
            "skipped": report.skipped,
        }

    r = run_forked(child)
    assert r["layout"]
    assert r["blocks"] >= 9000
    # None, or next to none: the interpreter may free a block of its own there in between (3.15),
    # and the fill loop's own ints, 32-byte blocks, that held holes while it ran are freed after.
    assert r["in_old_pools"] <= (25 if size == 32 else 10)


def test_a_used_pool_whose_first_blocks_are_free_in_order_is_filled_too() -> None:
    # A used pool hands out its free blocks most recently freed first. Freed in reverse order,
    # its first two blocks come out in a row, as a fresh pool's do: the fill must not stop there.
    def child() -> dict[str, Any]:
        objects: list[object] = [_object(64) for _ in range(20000)]
        starts = [i for i, o in enumerate(objects) if id(o) % POOL == 48][2:-2]
        holes = {i + k for i in starts for k in (0, 1)}  # each pool's first two blocks
        holes.update(range(starts[0] + 5, len(objects), 7))  # and more, all over
        for i in sorted(holes, reverse=True):  # the lowest freed last: first on the free list
            objects[i] = None
        pools = {id(o) & ~(POOL - 1) for o in objects if o is not None}
        report = _holes.fill_holes()
        new = [_object(64) for _ in range(200)]
        return {
            "holes": len(holes),
            "blocks": report.blocks,
            "in_old_pools": sum((id(o) & ~(POOL - 1)) in pools for o in new),
        }

    r = run_forked(child)
    assert r["blocks"] >= r["holes"] * 0.9, r
    assert r["in_old_pools"] <= 10, r


def test_a_name_only_the_type_cache_holds_is_freed_before_the_fill() -> None:
    # The type attribute cache keeps a reference to each name it caches; a name built at run
    # time lives only there, and a child replacing the entry would free it in a shared pool.
    def child() -> list[int]:
        class Visitor:
            pass

        name = "".join(["visit_", "Something", "Rare"])  # a new, not interned str
        alone = sys.getrefcount(name)
        getattr(Visitor, name, None)  # the misses are cached too (class and metaclass)
        before = sys.getrefcount(name)
        _holes.fill_holes()
        return [alone, before, sys.getrefcount(name)]

    alone, before, after = run_forked(child)
    assert before > alone, (alone, before)
    assert after == alone, (alone, after)


@pytest.mark.skipif(not LINUX_GLIBC, reason="glibc's malloc")
def test_glibc_free_chunks_are_filled_and_new_chunks_come_from_the_top() -> None:
    def child() -> dict[str, Any]:
        kept, freed = _with_holes(3000, 4000, 2)
        highest = max(id(o) for o in kept)
        freed.clear()  # ~2,000 free 3 KiB chunks between live ones (no coalescing)
        report = _holes.fill_holes()
        new = [bytes(3000) for _ in range(50)]
        return {
            "chunks": report.chunks,
            "below": sum(id(o) < highest for o in new),
            "skipped": report.skipped,
        }

    r = run_forked(child)
    assert r["skipped"] == {}
    assert r["chunks"] >= 1900
    assert r["below"] == 0


def _child_copies(fill: bool) -> int:
    _kept, freed = _with_holes(96, 60000, 8)  # a hole on every page of ~1.4 MiB of pools
    freed.clear()
    if fill:
        _holes.fill_holes()

    def worker() -> None:
        made = [bytes(96 - sys.getsizeof(b"")) for _ in range(7000)]
        del made

    return run_in_child(worker).copied


def test_a_child_allocating_after_the_fill_copies_far_fewer_pages() -> None:
    plain = run_forked(lambda: _child_copies(False))
    filled = run_forked(lambda: _child_copies(True))
    # Plain: the child's 7,000 objects go into the holes, so it writes (copies) every page of the
    # pools. Filled: they go to fresh pools: ~170 new pages.
    assert plain > 300 * 4096, plain
    assert filled < plain / 2.5, (plain, filled)


def test_warmup_fills_holes_by_default_and_can_be_told_not_to() -> None:
    def child() -> dict[str, Any]:
        _kept, freed = _with_holes(96, 8000, 4)
        freed.clear()
        on = forkmem.warmup()
        off = forkmem.warmup(fill_holes=False)
        return {
            "on": [on.holes_filled, on.holes_filled_bytes, "fill_holes" in on.seconds],
            "off": [off.holes_filled, off.steps_skipped.get("fill_holes")],
        }

    r = run_forked(child)
    filled, nbytes, timed = r["on"]
    assert filled >= 1900
    assert nbytes >= filled * 32
    assert timed
    assert r["off"] == [0, "fill_holes=False"]
    with pytest.raises(forkmem.InvalidArgument):
        forkmem.warmup(fill_holes="yes")  # type: ignore[arg-type]


@pytest.mark.skipif(not LINUX_GLIBC, reason="glibc's malloc")
def test_another_thread_fills_pools_only() -> None:
    def child() -> dict[str, Any]:
        result: list[_holes.HoleReport] = []
        thread = threading.Thread(target=lambda: result.append(_holes.fill_holes()))
        thread.start()
        thread.join()
        return {"chunks": result[0].chunks, "skipped": result[0].skipped}

    r = run_forked(child)
    assert r["chunks"] == 0
    assert "main thread" in r["skipped"]["malloc"]


def test_without_pymalloc_the_pools_are_left_alone() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from forkmem._holes import fill_holes; print(fill_holes())"],
        env=dict(os.environ, PYTHONMALLOC="malloc"),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "blocks=0" in out
    assert "pymalloc" in out
