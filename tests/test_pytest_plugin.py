"""The pytest plugin (fixture ``cow``, marker ``limit_cow``), run in real pytest sessions."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.linux_only
pytest_plugins = ["pytester"]

HEADER = """
import ctypes, faulthandler, gc, os, sys, time
import pytest

PARENT_PID = os.getpid()

@pytest.fixture
def frozen():
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()
"""


def _run(
    pytester: pytest.Pytester, body: str, *args: str, subprocess: bool = True
) -> pytest.RunResult:
    if subprocess:
        # ~13 MiB of small GC-tracked lists at module level: the parent heap to share.
        pytester.makepyfile(test_cow=HEADER + "DATA = [[i] for i in range(150_000)]\n" + body)
        # Tests that freeze the GC or measure the parent heap get a process of their own.
        return pytester.runpytest_subprocess("-p", "no:cacheprovider", *args, timeout=120)
    pytester.makepyfile(test_cow=HEADER + body)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)


def test_frozen_heap_whose_child_only_collects_passes(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
def test_unmarked_runs_in_this_process():
    # the plugin is loaded, but nothing of the forking machinery was imported for this test
    assert "forkmem.testing._child" not in sys.modules
    assert os.getpid() == PARENT_PID

@pytest.mark.limit_cow("5 MiB")
def test_collect(frozen):
    gc.collect()

@pytest.mark.limit_cow(fraction=0.05)
def test_collect_fraction(frozen):
    gc.collect()

def test_cow(cow):
    baseline = cow.baseline()
    assert cow.baseline() is baseline
    touched = cow.run(lambda: sum(x[0] for x in DATA))
    assert touched.value == sum(range(150_000))
    assert touched.copied > baseline.copied
    cow.assert_shared(lambda: None, max_copied="5 MiB")
    with pytest.raises(AssertionError, match="limit is 1.0 MiB"):
        cow.assert_shared(gc.collect, max_copied="1 MiB")
""",
    )
    result.assert_outcomes(passed=4)


def test_unfrozen_heap_fails_with_numbers(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
@pytest.mark.limit_cow("5 MiB")
def test_collect():
    gc.collect()

@pytest.mark.limit_cow(fraction=0.05)
def test_collect_fraction():
    gc.collect()
""",
    )
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "*[[]limit_cow[]] forked child copied * MiB of its parent's memory; "
            "the limit is 5.0 MiB (max_copied=5.0 MiB)",
            "*parent heap (anonymous RSS at fork): * MiB; copied = *% of it",
            "*which objects were copied (from /proc/self/pagemap):",
            "*list * MiB *% * objects  held by test_cow.DATA*",
            "*the limit is * (max_fraction=0.05 of the parent heap)",
        ]
    )


def test_child_that_raises_shows_its_traceback(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
def helper(n):
    raise ValueError(f"bad value {n}")

@pytest.mark.limit_cow("5 MiB")
def test_raises():
    helper(41 + 1)

@pytest.mark.limit_cow("5 MiB")
def test_skips_inside():
    pytest.importorskip("no_such_module_for_forkmem")
""",
        subprocess=False,
    )
    result.assert_outcomes(failed=1, skipped=1)
    result.stdout.fnmatch_lines(
        [
            "*Traceback in forked child *",
            "*in test_raises",
            "*helper(41 + 1)",
            "*in helper",
            '*raise ValueError(f"bad value {n}")',
            "*ValueError: bad value 42",
        ]
    )


def test_child_that_segfaults_fails_cleanly(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
@pytest.mark.limit_cow("5 MiB")
def test_segfault():
    ctypes.string_at(0)

def test_after():
    assert True
""",
    )
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["*[[]limit_cow[]] forked child * was killed by SIGSEGV*"])


def test_timeout_and_bad_markers_fail_the_test(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
@pytest.mark.limit_cow("5 MiB", timeout=0.5)
def test_sleeps():
    time.sleep(60)

@pytest.mark.limit_cow("5 MiB", fraction=0.1)
def test_both():
    pass

@pytest.mark.limit_cow(lots=1)
def test_unknown():
    pass

@pytest.mark.limit_cow(timeout=-1)
def test_negative_timeout():
    pass

@pytest.mark.limit_cow(None)
def test_none_limit():
    pass

@pytest.mark.limit_cow(limit=None)
def test_none_limit_keyword():
    pass
""",
        subprocess=False,
    )
    result.assert_outcomes(failed=6)
    result.stdout.fnmatch_lines(
        [
            "*did not finish within 0.5 s; it was killed*",
            "*bad limit_cow marker*not both*",
            "*unknown arguments: lots*",
            "*bad limit_cow marker*timeout must be a positive*",
            "*limit_cow(None) sets no limit*",
            "*limit_cow(None) sets no limit*",
        ]
    )


def test_skips_with_a_reason_without_fork(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
import os, pytest

@pytest.fixture(autouse=True)
def no_fork(monkeypatch):
    monkeypatch.delattr(os, "fork")
"""
    )
    result = _run(
        pytester,
        """
@pytest.mark.limit_cow("5 MiB")
def test_marked():
    pass

def test_fixture(cow):
    pass
""",
        "-rs",
        subprocess=False,
    )
    result.assert_outcomes(skipped=2)
    result.stdout.fnmatch_lines(["*forkmem: os.fork() is not available on this platform*"])


def test_works_under_xdist(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    result = _run(
        pytester,
        """
@pytest.mark.limit_cow("5 MiB")
def test_frozen(frozen):
    gc.collect()

@pytest.mark.limit_cow("5 MiB")
def test_raises():
    assert len(DATA) == 0

def test_cow(cow):
    assert cow.run(os.getpid).value != os.getpid()
""",
        "-n",
        "2",
    )
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*Traceback in forked child*", "*assert len(DATA) == 0"])
