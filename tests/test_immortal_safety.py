"""warmup(immortalize=True) must leave a process that runs, forks and shuts down cleanly.

Each test is a fresh interpreter (plain and ``-X dev``) that immortalizes its heap and then does
something immortality could break; it must exit 0 with nothing on stderr. The tests that show
what has to stay mortal (finalizers, weak-reference callbacks) fail if the walk stops skipping it.

The big run (a parent with 100+ stdlib modules, 200 forked children with a mixed workload,
repeated 20 times) is ``benchmarks/warmup_safety.py``; here it runs small by default. Set
``FORKMEM_SAFETY_FORKS`` and ``FORKMEM_SAFETY_REPEATS`` for the full count.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _immortal_runtime import needs_immortal

pytestmark = [pytest.mark.linux_only, needs_immortal]

TIMEOUT = 120.0
SAFETY_SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "warmup_safety.py"


def run_clean(code: str, *, dev: bool, cwd: Path | None = None) -> str:
    """Run ``code`` in a fresh interpreter; assert exit 0 and an empty stderr; return stdout."""
    cmd = [sys.executable, *(["-X", "dev"] if dev else []), "-c", textwrap.dedent(code)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)
    assert "Fatal Python error" not in proc.stderr, proc.stderr
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    return proc.stdout


dev_modes = pytest.mark.parametrize("dev", [False, True], ids=["plain", "dev"])


@dev_modes
def test_safety_run_forks_mixed_workload(dev: bool) -> None:
    if not SAFETY_SCRIPT.exists():
        pytest.skip("benchmarks/warmup_safety.py is not in this tree")
    forks = int(os.environ.get("FORKMEM_SAFETY_FORKS", "8"))
    repeats = int(os.environ.get("FORKMEM_SAFETY_REPEATS", "1"))
    sys.path.insert(0, str(SAFETY_SCRIPT.parent))
    try:
        import warmup_safety
    finally:
        sys.path.remove(str(SAFETY_SCRIPT.parent))
    for _ in range(repeats):
        summary = warmup_safety.run_one(sys.executable, dev, forks, 4, TIMEOUT)
        assert summary["returncode"] == 0, summary["stderr"]
        assert summary["stderr"] == ""
        assert summary["modules_imported"] >= 100  # type: ignore[operator]
        assert summary["ok"] == forks
        assert summary["immortalized"] > 50_000  # type: ignore[operator]


@dev_modes
def test_finalizers_still_run(dev: bool, tmp_path: Path) -> None:
    # A buffered file alive at warmup is flushed by its finalizer at shutdown. Were it
    # immortal, the finalizer would never run and the data would be lost.
    run_clean(
        """
        import warnings, forkmem
        warnings.simplefilter("ignore", ResourceWarning)
        out = open("data.txt", "w")
        out.write("payload")
        class Flag:
            def __del__(self):
                with open("del.txt", "w") as f:
                    f.write("ran")
        flag = Flag()
        report = forkmem.warmup(immortalize=True)
        assert report.skipped["has a finalizer (__del__ / tp_finalize)"] >= 2, report.skipped
        del flag
        """,
        dev=dev,
        cwd=tmp_path,
    )
    assert (tmp_path / "data.txt").read_text() == "payload"
    assert (tmp_path / "del.txt").read_text() == "ran"


@dev_modes
def test_weakref_callbacks_still_fire(dev: bool) -> None:
    out = run_clean(
        """
        import gc, weakref, forkmem
        class Thing: pass
        def local_only():
            fired = []
            obj = Thing()
            ref = weakref.ref(obj, lambda r: fired.append("ref"))
            weakref.finalize(obj, fired.append, "finalize")
            forkmem.warmup(immortalize=True)
            del obj
            return sorted(fired)
        assert local_only() == ["finalize", "ref"]
        # What an immortal container holds stays alive; emptying the container releases it.
        held = [Thing() for _ in range(3)]
        fired = []
        refs = [weakref.ref(t, lambda r: fired.append(1)) for t in held]
        forkmem.warmup(immortalize=True)
        held.clear()
        gc.collect()
        assert len(fired) == 3, fired
        print("ok")
        """,
        dev=dev,
    )
    assert out.strip() == "ok"


@dev_modes
def test_running_frames_generators_and_coroutines(dev: bool) -> None:
    out = run_clean(
        """
        import asyncio, sys, forkmem
        def gen():
            frame = sys._getframe()  # a materialized frame of running code
            report = forkmem.warmup(immortalize=True)
            got = yield report
            yield frame.f_code.co_name, got
        g = gen()
        report = next(g)
        assert report.skipped.get("generator or coroutine: may be running, and finalizes itself")
        assert g.send(5) == ("gen", 5)
        g.close()
        async def main():
            # -X dev logs callbacks over 0.1 s to stderr; a warm-up on a loaded machine is one.
            asyncio.get_running_loop().slow_callback_duration = 600.0
            report = forkmem.warmup(immortalize=True)
            await asyncio.sleep(0)
            return report.immortalized
        assert asyncio.run(main()) > 0
        def suspended():
            yield 1
            yield 2
        s = suspended()
        next(s)
        forkmem.warmup(immortalize=True)
        assert list(s) == [2]
        print("ok")
        """,
        dev=dev,
    )
    assert out.strip() == "ok"


@dev_modes
def test_interned_strings_and_repeat_calls(dev: bool) -> None:
    # 3.13 has mortal interned strings with their own clean-up at shutdown; 3.12 keeps them
    # immortal already. Immortalizing them must not upset either.
    out = run_clean(
        """
        import sys, forkmem
        names = [sys.intern("".join(["dyn", str(i)])) for i in range(5000)]
        first = forkmem.warmup(immortalize=True)
        again = [sys.intern("".join(["dyn", str(i)])) for i in range(5000)]
        assert all(a is b for a, b in zip(names, again))
        del names, again
        more = {"k%d" % i: i for i in range(1000)}
        second = forkmem.warmup(immortalize=True)
        assert 0 < second.immortalized < first.immortalized
        print("ok")
        """,
        dev=dev,
    )
    assert out.strip() == "ok"


@dev_modes
def test_strings_interned_after_warmup(dev: bool) -> None:
    # 3.13+ intern an already-immortal str as "interned immortal", and at shutdown make such
    # strings mortal again and free them with the interned dict, while immortal containers
    # still point at them. Shutdown must stay clean all the same.
    out = run_clean(
        """
        import sys, forkmem
        late = ["".join(["late", str(i)]) for i in range(3000)]
        holders = [{s: [s, (s,)]} for s in late]
        forkmem.warmup(immortalize=True)
        interned = [sys.intern(s) for s in late]
        assert all(a is b for a, b in zip(late, interned))
        assert all(sys.intern("".join(["late", str(i)])) is late[i] for i in range(3000))
        assert all(next(iter(h)) is s for h, s in zip(holders, interned))
        print("ok")
        """,
        dev=dev,
    )
    assert out.strip() == "ok"


@dev_modes
def test_threads_running_during_warmup(dev: bool) -> None:
    out = run_clean(
        """
        import threading, forkmem
        shared = {}
        stop = threading.Event()
        def churn():
            i = 0
            while not stop.is_set():
                shared[i % 100] = [str(i)] * 3
                i += 1
        workers = [threading.Thread(target=churn) for _ in range(2)]
        for w in workers:
            w.start()
        for _ in range(2):
            forkmem.warmup(immortalize=True)
        stop.set()
        for w in workers:
            w.join(30)
        assert not any(w.is_alive() for w in workers)
        print("ok")
        """,
        dev=dev,
    )
    assert out.strip() == "ok"


@dev_modes
def test_modules_and_classes_keep_working(dev: bool) -> None:
    # Module dicts, classes and functions become immortal: they must still be mutable,
    # subclassable, reloadable and deletable.
    out = run_clean(
        """
        import importlib, json, gc, forkmem, enum, dataclasses
        class Base:
            x = 1
        @dataclasses.dataclass
        class Point:
            a: int
        class Color(enum.Enum):
            RED = 1
        forkmem.warmup(immortalize=True)
        Base.x = 2
        Base.y = [1, 2]
        class Sub(Base): pass
        assert Sub().x == 2 and Base in Sub.__mro__
        del Sub
        gc.collect()
        assert Base.__subclasses__() == []
        assert Point(3) == Point(3) and Color(1) is Color.RED
        importlib.reload(json)
        assert json.loads("[1]") == [1]
        json.extra = "set"
        del json.extra
        import sys
        del sys.modules["json"]
        import json as again
        assert again.dumps({}) == "{}"
        print("ok")
        """,
        dev=dev,
    )
    assert out.strip() == "ok"
