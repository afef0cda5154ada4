"""forkmem.doctor.diagnose and ``forkmem doctor``: real settings read from the real system."""

from __future__ import annotations

import gc
import json
import multiprocessing
import sys
from pathlib import Path

import pytest

from _bytecode_trees import pyc, write
from forkmem.cli import main
from forkmem.doctor import diagnose

pytestmark = pytest.mark.linux_only
NAMES = ["bytecode", "dont_write_bytecode", "thp", "gc", "start_method", "cgroup"]


@pytest.fixture
def cached(tmp_path: Path) -> Path:
    src = write(tmp_path / "ok" / "m.py", "X = 1\n")
    pyc(src)
    return tmp_path / "ok"


@pytest.fixture
def uncached(tmp_path: Path) -> Path:
    write(tmp_path / "bad" / "m.py", "X = 1\n")
    return tmp_path / "bad"


def by_name(paths: list[str]) -> dict[str, object]:
    return {f.name: f for f in diagnose(paths=paths).findings}


def test_every_check_reports(cached: Path) -> None:
    result = diagnose(paths=[str(cached)])
    assert [f.name for f in result.findings] == NAMES
    for f in result.findings:
        assert f.level in ("ok", "info", "warn")
        assert f.value
        if f.level == "warn":
            assert f.advice, f"a warning says what to do: {f}"
    text = result.summary()
    assert all(name in text for name in NAMES)


def test_a_failing_check_keeps_its_name(tmp_path: Path) -> None:
    result = diagnose(paths=[str(tmp_path / "missing")])
    assert [f.name for f in result.findings] == NAMES
    bytecode = result.findings[0]
    assert bytecode.level == "info"
    assert bytecode.value.startswith("could not check:")


def test_bytecode_finding(cached: Path, uncached: Path) -> None:
    good = diagnose(paths=[str(cached)])
    (bc,) = [f for f in good.findings if f.name == "bytecode"]
    assert bc.level == "ok"
    assert bc.data["counts"]["ok"] == 1
    bad = diagnose(paths=[str(uncached)])
    (bc,) = [f for f in bad.findings if f.name == "bytecode"]
    assert bc.level == "warn"
    assert "1 missing" in bc.value
    assert "forkmem bytecode --fix" in bc.advice
    assert not bad.ok


def test_dont_write_bytecode_finding(cached: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    f = by_name([str(cached)])["dont_write_bytecode"]
    assert f.level == "info"  # type: ignore[attr-defined]
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    f = by_name([str(cached)])["dont_write_bytecode"]
    assert f.level == "ok"  # type: ignore[attr-defined]


def test_thp_matches_the_kernel_file(cached: Path) -> None:
    f = by_name([str(cached)])["thp"]
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        assert "not available" in f.value  # type: ignore[attr-defined]
        return
    mode = text[text.index("[") + 1 : text.index("]")]
    assert f.data["enabled"] == mode  # type: ignore[attr-defined]


def test_gc_and_start_method(cached: Path) -> None:
    found = by_name([str(cached)])
    gcf = found["gc"]
    assert gcf.data["freeze_count"] == gc.get_freeze_count()  # type: ignore[attr-defined]
    assert gcf.data["collector"] in ("generational", "incremental", "free-threaded")  # type: ignore[attr-defined]
    sm = found["start_method"]
    expected = (
        multiprocessing.get_start_method(allow_none=True)
        or (multiprocessing.get_all_start_methods()[0])
    )
    assert sm.data["start_method"] == expected  # type: ignore[attr-defined]
    # The doctor must not pin the start method as a side effect.
    assert multiprocessing.get_start_method(allow_none=True) in (None, expected)


def test_cgroup_figures_are_sane(cached: Path) -> None:
    f = by_name([str(cached)])["cgroup"]
    current, limit = f.data["current"], f.data["limit"]  # type: ignore[attr-defined]
    if current is None:
        pytest.skip("no readable cgroup memory files here")
    assert current > 1024 * 1024, "this process alone uses more than 1 MiB"
    if limit is not None:
        assert limit > 0


def test_cli_json_and_exit_codes(
    cached: Path, uncached: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["doctor", "--json", "--path", str(uncached)])
    data = json.loads(capsys.readouterr().out)
    assert code == 1
    assert data["ok"] is False
    assert [f["name"] for f in data["findings"]] == NAMES
    code = main(["doctor", "--path", str(cached)])
    out = capsys.readouterr().out
    levels = [line[1:5].strip() for line in out.splitlines() if line.startswith("[")]
    assert len(levels) == len(NAMES)
    assert code == (1 if "warn" in levels else 0)
    assert main(["doctor", "--path", str(cached / "nope")]) == 2
