"""Copy-on-write benchmark: how much of a ~200 MiB parent heap do forked children copy?

The parent builds a heap of small records (dicts, lists, strings, ints), prepares it in one of
several ways, then forks four children at once. Each child does one thing and reports how much
its Private_Dirty grew (pages the kernel had to copy for it, from /proc/self/smaps_rollup via
``forkmem.memory()``):

- ``idle``: nothing (the floor: stack, a few interpreter pages)
- ``gc.collect``: one full collection (GC-header writes)
- ``alloc burst``: allocates 500,000 small lists in chunks (automatic collections)
- ``read all``: reads every record once (reference-count writes)
- ``keep 100k new``: allocates 100,000 small lists and keeps them (~8 MiB of new objects)
- ``import, .pyc`` / ``import, no .pyc``: imports a generated 2,000-function module, once
  with its bytecode cache present and once without (compiled from source, as in an image whose
  ``.pyc`` files were deleted); the difference is the compiler's private memory

The whole table is run twice: on a compact heap, and on a heap where the parent freed every
fourth record before forking (``holes``): the allocator then places the child's new objects in
those holes, inside pages still shared with the parent, and each one copies a page.

Every preparation runs in a fresh interpreter, so nothing leaks from one to the next. To add a
preparation (a column), append a ``(label, function)`` pair to ``PREPARATIONS``; the function
runs in the parent after the heap is built and before the fork, e.g.
``("warmup(immortalize=True)", lambda: forkmem.warmup(immortalize=True))``.

Usage: ``python benchmarks/cow.py [--heap-mib 200] [--only LABEL ...]``
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import select
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

from _chart import bar_chart

if TYPE_CHECKING:
    from collections.abc import Callable

MiB = 1 << 20
CHILD_TIMEOUT = 300.0


def _prepare_nothing() -> object:
    return None


def _prepare_frozen() -> object:
    import forkmem

    # Entered and never left: the children are forked inside the block.
    block = forkmem.frozen()
    return block.__enter__()


def _prepare_warmup_immortal() -> object:
    import forkmem

    return forkmem.warmup(immortalize=True)


# (column label, preparation run in the parent between building the heap and forking).
PREPARATIONS: list[tuple[str, Callable[[], object]]] = [
    ("no freeze", _prepare_nothing),
    ("frozen()", _prepare_frozen),
]
# warmup(immortalize=True) only where forkmem can immortalize (CPython 3.12+, GIL build; the
# runtime check probes the interpreter).
if sys.version_info >= (3, 12):
    from forkmem._immortal import unsupported_reason

    if unsupported_reason() is None:
        PREPARATIONS.append(("warmup(immortalize)", _prepare_warmup_immortal))


def _rss_anon() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("RssAnon missing from /proc/self/status")


def _private_dirty() -> int:
    from forkmem.usage import memory

    value = memory().private_dirty
    if value is None:
        raise RuntimeError("this kernel does not report Private_Dirty")
    return value


def build_heap(mib: int, *, holes: bool = False) -> tuple[list[dict[str, object]], int]:
    """~``mib`` MiB of small records; returns them and the anonymous RSS they added.

    ``holes=True`` then frees every fourth record, leaving free slots spread over the heap.
    """
    before = _rss_anon()
    heap: list[dict[str, object]] = []
    i = 0
    while _rss_anon() - before < mib * MiB:
        for _ in range(20_000):
            heap.append({"id": i * 1000, "name": f"record-{i}", "tags": [i * 7, i * 11]})
            i += 1
    size = _rss_anon() - before
    if holes:
        del heap[::4]
    return heap, size


def _idle(heap: list[dict[str, object]]) -> None:
    pass


def _collect(heap: list[dict[str, object]]) -> None:
    gc.collect()


def _alloc_burst(heap: list[dict[str, object]]) -> None:
    # Chunks are dropped as we go: what grows is what the automatic collections copy.
    for _ in range(50):
        chunk = [[] for _ in range(10_000)]
        del chunk


def _read_all(heap: list[dict[str, object]]) -> None:
    total = 0
    for record in heap:
        total += len(record["name"])  # type: ignore[arg-type]


def _read_every_object_collect(heap: list[dict[str, object]]) -> None:
    # Every record, key, value and list item once (each one's refcount), then a collection.
    total = 0
    for record in heap:
        for key, value in record.items():
            total += len(key)
            if type(value) is list:
                for item in value:
                    total += item
    gc.collect()


_kept: list[object] = []


def _keep_new(heap: list[dict[str, object]]) -> None:
    _kept.extend([] for _ in range(100_000))


_module_dir = ""


def _module_source(functions: int = 2000) -> str:
    body = [
        f"def handler_{i}(x, y={i}):\n"
        f"    values = [x, y, {i} * 3, 'name-{i}']\n"
        f"    return {{'id': {i}, 'values': values, 'total': x + y}}\n"
        for i in range(functions)
    ]
    return "\n".join(body)


def _write_modules() -> str:
    """Two identical generated modules in a temporary directory; only one gets a .pyc."""
    import py_compile
    import tempfile

    directory = tempfile.mkdtemp(prefix="forkmem-cow-")
    source = _module_source()
    for name in ("fm_cow_cached", "fm_cow_uncached"):
        with open(os.path.join(directory, f"{name}.py"), "w") as f:
            f.write(source)
    py_compile.compile(os.path.join(directory, "fm_cow_cached.py"), doraise=True)
    return directory


def _import(name: str) -> None:
    import importlib

    sys.dont_write_bytecode = True  # the uncached module stays uncached
    sys.path.insert(0, _module_dir)
    importlib.import_module(name)


def _import_cached(heap: list[dict[str, object]]) -> None:
    _import("fm_cow_cached")


def _import_uncached(heap: list[dict[str, object]]) -> None:
    _import("fm_cow_uncached")


SCENARIOS: list[tuple[str, Callable[[list[dict[str, object]]], None]]] = [
    ("idle", _idle),
    ("gc.collect", _collect),
    ("alloc burst", _alloc_burst),
    ("read all", _read_all),
    ("read+collect", _read_every_object_collect),
    ("keep 100k new", _keep_new),
    ("import, .pyc", _import_cached),
    ("import, no .pyc", _import_uncached),
]


def _fork_scenario(heap: list[dict[str, object]], scenario: Callable[..., None]) -> tuple[int, int]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            start = _private_dirty()
            scenario(heap)
            payload = json.dumps({"copied": _private_dirty() - start})
        except BaseException as exc:
            payload, code = json.dumps({"error": repr(exc)}), 1
        try:
            os.write(w, payload.encode())
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def run_preparation(label: str, heap_mib: int, *, holes: bool) -> dict[str, Any]:
    """Build the heap, prepare it, fork one child per scenario at once; collect their copies."""
    global _module_dir
    prepare = dict(PREPARATIONS)[label]
    _module_dir = _write_modules()
    heap, heap_bytes = build_heap(heap_mib, holes=holes)
    gc.collect()
    objects = len(gc.get_objects())  # tracked objects, for the per-million cost row
    started = time.perf_counter()
    keep = prepare()
    prepare_seconds = time.perf_counter() - started
    children = [(name, *_fork_scenario(heap, fn)) for name, fn in SCENARIOS]
    results: dict[str, int] = {}
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        for name, _pid, r in children:
            data = b""
            while True:
                ready, _, _ = select.select([r], [], [], max(deadline - time.monotonic(), 0))
                if not ready:
                    raise TimeoutError(f"child {name!r} did not answer in {CHILD_TIMEOUT:.0f} s")
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                data += chunk
            out = json.loads(data or b'{"error": "child died"}')
            if "error" in out:
                raise RuntimeError(f"child {name!r} failed: {out['error']}")
            results[name] = out["copied"]
    finally:
        for _name, pid, r in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)  # already exited unless something went wrong
            os.waitpid(pid, 0)
            with contextlib.suppress(OSError):
                os.close(r)
        import shutil

        shutil.rmtree(_module_dir, ignore_errors=True)
    del keep
    return {
        "heap": heap_bytes,
        "prepare_seconds": prepare_seconds,
        "objects": objects,
        "copied": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heap-mib", type=int, default=200, help="parent heap size (200)")
    parser.add_argument("--only", action="append", help="run only this preparation (repeatable)")
    parser.add_argument("--run", help=argparse.SUPPRESS)
    parser.add_argument("--holes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.heap_mib < 1:
        parser.error("--heap-mib must be >= 1")
    if args.run:
        print(json.dumps(run_preparation(args.run, args.heap_mib, holes=args.holes)))
        return 0

    labels = [label for label, _ in PREPARATIONS]
    if args.only:
        unknown = set(args.only) - set(labels)
        if unknown:
            parser.error(f"unknown preparation(s) {sorted(unknown)}; choose from {labels}")
        labels = [label for label in labels if label in args.only]
    print(
        f"# copy-on-write {datetime.date.today()}  Python {platform.python_version()}  "
        f"heap={args.heap_mib} MiB  children's copies (Private_Dirty growth), % of parent heap",
        flush=True,
    )
    for holes in (False, True):
        results = {}
        for label in labels:
            command = [sys.executable, __file__, f"--run={label}", f"--heap-mib={args.heap_mib}"]
            proc = subprocess.run(
                command + (["--holes"] if holes else []),
                capture_output=True,
                text=True,
                timeout=CHILD_TIMEOUT * 2,
            )
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            results[label] = json.loads(proc.stdout.strip().splitlines()[-1])
        print()
        print("heap with holes (every 4th record freed before the fork)" if holes else "heap")
        _print_table(labels, results)
        if not holes:
            bar_chart(
                "cow",
                f"What a forked child copies of a {args.heap_mib} MiB heap "
                f"(Python {platform.python_version()})",
                [name for name, _ in SCENARIOS],
                {
                    label: [results[label]["copied"][n] / MiB for n, _ in SCENARIOS]
                    for label in labels
                },
                unit="MiB copied per child",
            )
    return 0


def _print_table(labels: list[str], results: dict[str, dict[str, Any]]) -> None:
    width = max(22, *(len(label) + 2 for label in labels))
    print(f"{'child does':<16}" + "".join(f"{label:>{width}}" for label in labels))
    for name, _fn in SCENARIOS:
        cells = []
        for label in labels:
            r = results[label]
            copied = r["copied"][name]
            cells.append(f"{copied / MiB:7.1f} MiB ({copied / r['heap']:6.1%})")
        print(f"{name:<16}" + "".join(f"{c:>{width}}" for c in cells))
    print(
        f"{'parent heap':<16}"
        + "".join(f"{results[label]['heap'] / MiB:>{width - 4}.0f} MiB" for label in labels)
    )
    print(
        f"{'prepare s':<16}"
        + "".join(f"{results[label]['prepare_seconds']:>{width}.3f}" for label in labels)
    )
    print(
        f"{'prepare s/M obj':<16}"
        + "".join(
            f"{results[label]['prepare_seconds'] / results[label]['objects'] * 1e6:>{width}.3f}"
            for label in labels
        )
    )


if __name__ == "__main__":
    sys.exit(main())
