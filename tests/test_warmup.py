"""forkmem.warmup(): collection, str hashes, malloc_trim, freeze; immortalization where supported.

warmup() changes the whole process (it freezes, and with immortalize=True it makes the heap
immortal), so every test runs it in a forked child or a fresh interpreter, never in pytest's own
process.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import platform
import select
import signal
import subprocess
import sys
import textwrap
import time
from typing import TYPE_CHECKING, Any

import pytest

import forkmem
from _immortal_runtime import IMMORTAL_FLAGS, IMMORTAL_SUPPORTED, IMMORTAL_WORD, needs_immortal
from forkmem.errors import InvalidArgument, UnsupportedRuntime

if TYPE_CHECKING:
    from collections.abc import Callable

pytestmark = pytest.mark.linux_only

TIMEOUT = 60.0
GLIBC = platform.libc_ver()[0] == "glibc"


def in_child(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a forked child and return its JSON-able result (bounded wait)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read_fd)
        try:
            payload = {"ok": fn()}
        except BaseException as exc:
            payload = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(write_fd, json.dumps(payload).encode())
        os._exit(0)
    os.close(write_fd)
    data = b""
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_fd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError("child timed out")
            chunk = os.read(read_fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_fd)
        os.waitpid(pid, 0)
    result = json.loads(data)
    if "error" in result:
        raise AssertionError(result["error"])
    return result["ok"]


def run_python(code: str, *, dev: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (full start-up and shutdown)."""
    cmd = [sys.executable, *(["-X", "dev"] if dev else []), "-c", textwrap.dedent(code)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)


def _str_hash_cached(s: str) -> bool:
    # PyASCIIObject.hash (after refcount, type and length) is -1 until hash() fills it in.
    return ctypes.c_ssize_t.from_address(id(s) + 24).value != -1


def _fresh_str(i: int) -> str:
    return "".join(["warm", "up", str(i), "x" * (i % 7)])  # built at run time: no hash yet


def test_report_fields_and_freeze() -> None:
    def child() -> dict[str, Any]:
        # No automatic collection may find the cycles first, neither while they are made nor
        # while warmup() imports what it needs: warmup's own collection must.
        importlib.import_module("forkmem._immortal")
        gc.disable()
        for _ in range(100):
            a: list[Any] = []
            a.append(a)
        del a
        gc.enable()
        report = forkmem.warmup()
        return {
            "frozen": report.frozen,
            "freeze_count": gc.get_freeze_count(),
            "collected": report.collected,
            "immortalized": report.immortalized,
            "steps_skipped": dict(report.steps_skipped),
            "seconds": sorted(report.seconds),
            "total": report.total_seconds,
            "sum": sum(report.seconds.values()),
            "enabled": gc.isenabled(),
        }

    r = in_child(child)
    assert r["frozen"] == r["freeze_count"] > 1000
    assert r["collected"] >= 100
    assert r["immortalized"] == 0
    assert r["steps_skipped"]["immortalize"] == "immortalize=False"
    assert {"collect", "hash_strings", "freeze"} <= set(r["seconds"])
    assert r["total"] == pytest.approx(r["sum"])
    assert r["enabled"] is True


def test_hash_strings_reaches_lists_untracked_tuples_dicts_and_code() -> None:
    def child() -> dict[str, Any]:
        in_list = [_fresh_str(i) for i in range(50)]
        in_tuple = [tuple(_fresh_str(i) for i in range(100, 103)) for _ in range(3)]
        in_dict = [{"k": _fresh_str(i)} for i in range(200, 210)]
        keys = {_fresh_str(i): i for i in range(300, 310)}
        gc.collect()  # untracks the tuples (and, up to 3.13, the dicts) that hold only strings
        # CPython 3.14 untracks such tuples when it builds them but keeps every dict tracked.
        untracked = not gc.is_tracked(in_tuple[0]) and (
            not gc.is_tracked(in_dict[0]) or sys.version_info >= (3, 14)
        )
        strs = [*in_list, *in_tuple[0], *(d["k"] for d in in_dict), *keys]
        before = sum(map(_str_hash_cached, strs))
        report = forkmem.warmup()
        after = sum(map(_str_hash_cached, strs))
        return {
            "n": len(strs),
            "before": before,
            "after": after,
            "untracked": untracked,
            "hashed": report.strings_hashed,
        }

    r = in_child(child)
    assert r["untracked"]
    assert r["before"] == 10  # only the dict keys were hashed (on insertion)
    assert r["after"] == r["n"]
    assert r["hashed"] >= r["n"] - r["before"]


def test_hash_strings_false_leaves_strings_alone() -> None:
    def child() -> dict[str, Any]:
        strs = [_fresh_str(i) for i in range(50)]
        report = forkmem.warmup(hash_strings=False)
        return {
            "cached": sum(map(_str_hash_cached, strs)),
            "hashed": report.strings_hashed,
            "why": report.steps_skipped.get("hash_strings"),
        }

    assert in_child(child) == {"cached": 0, "hashed": 0, "why": "hash_strings=False"}


def test_previously_frozen_objects_are_collected_and_refrozen() -> None:
    def child() -> dict[str, Any]:
        import weakref

        class Node:
            pass

        node = Node()
        node.me = node  # type: ignore[attr-defined]
        alive = weakref.ref(node)
        gc.freeze()  # the cycle is frozen while still referenced...
        del node  # ...then dropped: frozen garbage a plain collect never sees
        gc.collect()
        frozen_garbage_survived = alive() is not None
        report = forkmem.warmup()
        return {
            "survived_collect": frozen_garbage_survived,
            "freed": alive() is None,
            "previously_frozen": report.previously_frozen,
            "count": gc.get_freeze_count(),
            "frozen": report.frozen,
        }

    r = in_child(child)
    assert r["survived_collect"] is True
    assert r["freed"] is True
    assert r["previously_frozen"] > 0
    assert r["count"] == r["frozen"] > 0


def test_trim_runs_or_says_why() -> None:
    def child() -> dict[str, Any]:
        on = forkmem.warmup()
        off = forkmem.warmup(trim=False)
        return {
            "on_skipped": on.steps_skipped.get("trim"),
            "on_timed": "trim" in on.seconds,
            "off_skipped": off.steps_skipped.get("trim"),
            "off_timed": "trim" in off.seconds,
        }

    r = in_child(child)
    assert r["off_skipped"] == "trim=False"
    assert not r["off_timed"]
    if GLIBC:
        assert r["on_skipped"] is None
        assert r["on_timed"]
    else:
        assert "glibc" in r["on_skipped"]


def test_gc_state_restored() -> None:
    def child() -> list[bool]:
        gc.disable()
        forkmem.warmup()
        disabled_after = gc.isenabled()
        gc.enable()
        forkmem.warmup()
        return [disabled_after, gc.isenabled()]

    assert in_child(child) == [False, True]


@pytest.mark.parametrize("bad", [1, None, "yes", 0.0])
@pytest.mark.parametrize("name", ["immortalize", "hash_strings", "trim"])
def test_invalid_arguments(name: str, bad: object) -> None:
    freeze_count = gc.get_freeze_count()
    with pytest.raises(InvalidArgument, match=name):
        forkmem.warmup(**{name: bad})  # type: ignore[arg-type]
    assert gc.get_freeze_count() == freeze_count  # refused before doing anything


def test_keyword_only() -> None:
    with pytest.raises(TypeError):
        forkmem.warmup(True)  # type: ignore[misc]


@pytest.mark.skipif(IMMORTAL_SUPPORTED, reason="immortalization is supported here")
def test_immortalize_unsupported_raises_before_changing_anything() -> None:
    freeze_count = gc.get_freeze_count()
    with pytest.raises(UnsupportedRuntime) as info:
        forkmem.warmup(immortalize=True)
    assert isinstance(info.value, NotImplementedError)
    assert "3.12" in str(info.value)
    assert gc.get_freeze_count() == freeze_count
    # ...and warmup without it still works on this version.
    assert in_child(lambda: forkmem.warmup().frozen) > 0


@needs_immortal
def test_immortalize_report_and_refcounts() -> None:
    proc = run_python(
        """
        import ctypes, json, sys, forkmem
        data = {"k%d" % i: ["v%d" % i, (i, str(i))] for i in range(1000)}
        class Config:
            def method(self): return "const-in-code"
        cfg = Config()
        before = sys.getrefcount(data)
        report = forkmem.warmup(immortalize=True)
        objs = (data, data["k5"], data["k5"][1], cfg, Config, Config.method,
                Config.method.__code__, next(iter(data)))
        # The header's first word, read directly: low half the count, high half untouched.
        after = [ctypes.c_uint64.from_address(id(o)).value for o in objs]
        is_immortal = getattr(sys, "_is_immortal", None)
        flagged = None if is_immortal is None else [is_immortal(o) for o in objs]
        new = []
        print(json.dumps({"before": before, "after": after, "flagged": flagged,
                          "new": sys.getrefcount(new),
                          "immortalized": report.immortalized, "bytes": report.immortalized_bytes,
                          "skipped": dict(report.skipped), "steps_skipped": report.steps_skipped,
                          "seconds": sorted(report.seconds)}))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    r = json.loads(proc.stdout)
    assert r["before"] < 10
    assert [word & 0xFFFF_FFFF for word in r["after"]] == [IMMORTAL_WORD] * 8
    # 3.14+: _Py_IMMORTAL_FLAGS (ob_flags bit 0), which the eval loop reads; nothing else.
    assert [word >> 32 for word in r["after"]] == [IMMORTAL_FLAGS] * 8
    if sys.version_info >= (3, 14):
        assert r["flagged"] == [True] * 8  # sys._is_immortal agrees
    assert r["new"] < 10  # objects made after warmup are ordinary
    assert r["immortalized"] > 3000
    assert r["bytes"] > 100 * r["immortalized"] // 2
    assert r["steps_skipped"] == {}
    assert "immortalize" in r["seconds"]


def _child_copy_fraction(immortalize: bool) -> dict[str, float]:
    """Parent builds ~35 MiB of small objects, prepares, forks; the child reads every object,
    collects, and reports how much it copied, as a fraction of what the parent built."""
    code = f"""
        import gc, json, os, sys, forkmem
        base = forkmem.rss_breakdown().rss_anon
        data = [{{"id": i, "name": "n%d" % i, "tags": ["a%d" % i, "b"], "pair": (i, str(i))}}
                for i in range(70_000)]
        heap = forkmem.rss_breakdown().rss_anon - base
        if {immortalize}:
            forkmem.warmup(immortalize=True)
        else:
            with forkmem.frozen():  # collect + gc.freeze(), left frozen
                pass
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            start = forkmem.memory().private_dirty
            n = 0
            for d in data:
                for k, v in d.items():
                    n += len(k)
                    if isinstance(v, list):
                        for x in v:
                            n += len(x)
                    elif isinstance(v, tuple):
                        n += v[0] + len(v[1])
            gc.collect()
            copied = forkmem.memory().private_dirty - start
            os.write(w, json.dumps({{"copied": copied, "heap": heap}}).encode())
            os._exit(0)
        os.close(w)
        out = os.read(r, 4096)
        os.waitpid(pid, 0)
        print(out.decode())
    """
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    return {"fraction": r["copied"] / r["heap"], "heap": r["heap"], "copied": r["copied"]}


@needs_immortal
def test_immortalized_child_copies_almost_nothing() -> None:
    frozen_only = _child_copy_fraction(immortalize=False)
    warmed = _child_copy_fraction(immortalize=True)
    assert frozen_only["heap"] > 20 * 2**20
    assert frozen_only["fraction"] >= 0.30, frozen_only
    assert warmed["fraction"] <= 0.02, warmed
