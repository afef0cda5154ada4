"""``forkmem demo``: fork real children from a big heap, with and without ``forkmem.frozen()``.

It shows forkmem's main job on a live example: the same children, the same ``gc.collect()``,
and the memory each child copied from its parent, measured from the kernel's smaps_rollup.
"""

from __future__ import annotations

import gc
import json
import os
import select
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from forkmem._units import format_bytes
from forkmem.errors import ChildTimeout, InvalidArgument, UnsupportedPlatform

if TYPE_CHECKING:
    import argparse

_MIB = 1024 * 1024


@dataclass(frozen=True)
class _Scenario:
    name: str
    children_private_dirty: list[int]
    tree_pss: int
    tree_rss: int


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "demo",
        help="fork children from a big heap with and without forkmem.frozen() and compare",
        description=(
            "Build a heap of small Python objects, fork children that each run gc.collect(), "
            "and show how much of the parent's memory each child copied: first without "
            "forkmem, then under forkmem.frozen()."
        ),
    )
    parser.add_argument("--heap-mib", type=int, default=150, help="parent heap size (default 150)")
    parser.add_argument("--children", type=int, default=2, help="children per run (default 2)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.set_defaults(func=run)


def _build_heap(target_bytes: int) -> list[list[int]]:
    """Small GC-tracked lists, the shape of a loaded application's heap."""
    from forkmem.usage import rss_breakdown

    start = rss_breakdown().rss
    heap: list[list[int]] = []
    while rss_breakdown().rss - start < target_bytes:
        base = len(heap)
        heap.extend([base + i, base + i + 1] for i in range(100_000))
    return heap


def _fork_children(count: int) -> list[tuple[int, int, int]]:
    """Fork children that collect, report ready, then wait to be released."""
    children: list[tuple[int, int, int]] = []
    for _ in range(count):
        ready_r, ready_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: collect (the write that breaks sharing), then wait
            try:
                os.close(ready_r)
                os.close(go_w)
                # Siblings' pipe ends were inherited too: holding them would keep a sibling
                # from ever seeing EOF on its release pipe.
                for _, sib_ready_r, sib_go_w in children:
                    os.close(sib_ready_r)
                    os.close(sib_go_w)
                gc.collect()
                os.write(ready_w, b"1")
                os.read(go_r, 1)
            finally:
                os._exit(0)
        os.close(ready_w)
        os.close(go_r)
        children.append((pid, ready_r, go_w))
    return children


def _measure(count: int) -> _Scenario:
    from forkmem.tree import memory_tree
    from forkmem.usage import memory

    children = _fork_children(count)
    try:
        for _, ready_r, _ in children:
            readable, _, _ = select.select([ready_r], [], [], 60)
            if not readable:
                raise ChildTimeout("a demo child did not finish gc.collect() within 60 s")
            os.read(ready_r, 1)
        dirty = [memory(pid).private_dirty or 0 for pid, _, _ in children]
        tree = memory_tree()
        return _Scenario("", dirty, tree.total_pss or 0, tree.total_rss)
    finally:
        for pid, ready_r, go_w in children:
            os.close(ready_r)
            os.close(go_w)  # EOF releases the child
            os.waitpid(pid, 0)


def run(args: argparse.Namespace) -> int:
    import forkmem

    if not hasattr(os, "fork") or not os.path.exists("/proc/self/smaps_rollup"):
        raise UnsupportedPlatform("forkmem demo needs os.fork() and /proc (Linux)")
    if args.heap_mib < 10 or args.children < 1:
        raise InvalidArgument("--heap-mib must be at least 10 and --children at least 1")

    print(f"building a {args.heap_mib} MiB heap of small objects...", flush=True)
    heap = _build_heap(args.heap_mib * _MIB)
    heap_bytes = args.heap_mib * _MIB

    plain = _measure(args.children)
    t0 = time.perf_counter()
    with forkmem.frozen() as report:
        freeze_seconds = time.perf_counter() - t0
        frozen = _measure(args.children)
    del heap

    rows = [("without forkmem", plain), ("forkmem.frozen()", frozen)]
    if args.json:
        out = {
            "heap_bytes": heap_bytes,
            "objects_frozen": report.objects_frozen,
            "freeze_seconds": freeze_seconds,
            "scenarios": {name: asdict(s) for name, s in rows},
        }
        print(json.dumps(out, indent=2))
        return 0

    print(
        f"parent heap: {format_bytes(heap_bytes)}; {args.children} children each run gc.collect()\n"
    )
    print(f"{'':18} {'copied per child':>18} {'% of heap':>10} {'tree PSS':>11} {'tree RSS':>11}")
    for name, s in rows:
        per_child = sum(s.children_private_dirty) / len(s.children_private_dirty)
        print(
            f"{name:18} {format_bytes(per_child):>18} {100 * per_child / heap_bytes:>9.1f}%"
            f" {format_bytes(s.tree_pss):>11} {format_bytes(s.tree_rss):>11}"
        )
    before = sum(plain.children_private_dirty) / len(plain.children_private_dirty)
    after = sum(frozen.children_private_dirty) / len(frozen.children_private_dirty)
    ratio = before / after if after else float("inf")
    print(
        f"\nforkmem.frozen() froze {report.objects_frozen:,} objects in "
        f"{freeze_seconds * 1000:.0f} ms; each child copied {ratio:.0f}x less "
        f"({format_bytes(before)} -> {format_bytes(after)}), and the tree's PSS fell by "
        f"{format_bytes(plain.tree_pss - frozen.tree_pss)}."
    )
    return 0
