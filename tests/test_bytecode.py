"""forkmem.check_bytecode / compile_bytecode on real trees in temporary directories."""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import sys
import types
import zipfile
from pathlib import Path

import pytest

import forkmem
from _bytecode_trees import (
    make_readable,
    pyc,
    run_unprivileged,
    shared_tmpdir,
    snapshot,
    write,
)
from _lazy_module import lazy_module
from forkmem.bytecode import BytecodeReport, check_bytecode, compile_bytecode

pytestmark = pytest.mark.linux_only
TAG = sys.implementation.cache_tag


def counts(report: BytecodeReport) -> dict[str, int]:
    return {k: v for k, v in report.counts.items() if v}


def status_of(report: BytecodeReport, path: Path) -> str:
    (f,) = [f for f in report.files if f.source == str(path)]
    return f.status


@pytest.fixture
def pkg(tmp_path: Path) -> Path:
    """A package with three modules and no pycs."""
    root = tmp_path / "site"
    write(root / "fmbcpkg" / "__init__.py", "VALUE = 1\n")
    write(root / "fmbcpkg" / "a.py", "def f():\n    return 'a'\n")
    write(root / "fmbcpkg" / "sub" / "b.py", "B = [i for i in range(3)]\n")
    return root


def sources(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def test_compiled_tree_is_ok(pkg: Path) -> None:
    for src in sources(pkg):
        pyc(src)
    report = check_bytecode(paths=[pkg])
    assert counts(report) == {"ok": 3}
    assert report.ok
    assert report.uncached_bytes == 0
    for f in report.files:
        assert f.invalidation == "timestamp"
        assert f.cache == importlib.util.cache_from_source(f.source or "")
    assert report.scope == "paths"
    assert report.paths == (str(pkg),)


def test_missing_counts_and_bytes(pkg: Path) -> None:
    report = check_bytecode(paths=str(pkg))
    assert counts(report) == {"missing": 3}
    assert not report.ok
    assert report.uncached_bytes == sum(p.stat().st_size for p in sources(pkg))
    assert {f.reason for f in report.files} == {"no pyc"}
    assert "3 files" in report.summary()


def test_stale_when_source_edited(pkg: Path) -> None:
    for src in sources(pkg):
        pyc(src)
    edited = pkg / "fmbcpkg" / "a.py"
    edited.write_text("def f():\n    return 'edited'\n")
    st = edited.stat()
    os.utime(edited, (st.st_atime, st.st_mtime + 10))
    report = check_bytecode(paths=[pkg])
    assert counts(report) == {"ok": 2, "stale": 1}
    assert status_of(report, edited) == "stale"
    (stale,) = report.by_status("stale")
    assert "source edited" in stale.reason


def test_same_size_same_mtime_edit_passes_like_the_importer(pkg: Path) -> None:
    # A timestamp pyc cannot see an edit that keeps mtime and size: the importer accepts it too.
    src = pkg / "fmbcpkg" / "a.py"
    pyc(src)
    st = src.stat()
    src.write_text(src.read_text().replace("'a'", "'z'"))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert status_of(check_bytecode(paths=[src]), src) == "ok"


def test_wrong_magic_is_stale(pkg: Path) -> None:
    src = pkg / "fmbcpkg" / "a.py"
    cache = Path(pyc(src))
    data = bytearray(cache.read_bytes())
    data[0:2] = (3495).to_bytes(2, "little")  # the magic of CPython 3.11
    if bytes(data[:4]) == importlib.util.MAGIC_NUMBER:
        data[0:2] = (3531).to_bytes(2, "little")
    cache.write_bytes(bytes(data))
    report = check_bytecode(paths=[src])
    (f,) = report.files
    assert f.status == "stale"
    assert "another Python" in f.reason


def test_truncated_pyc_is_stale(pkg: Path) -> None:
    src = pkg / "fmbcpkg" / "a.py"
    cache = Path(pyc(src))
    cache.write_bytes(cache.read_bytes()[:10])
    (f,) = check_bytecode(paths=[src]).files
    assert f.status == "stale"
    assert "truncated" in f.reason


def test_checked_hash_pyc(pkg: Path) -> None:
    src = pkg / "fmbcpkg" / "a.py"
    pyc(src, mode="CHECKED_HASH")
    (f,) = check_bytecode(paths=[src]).files
    assert (f.status, f.invalidation) == ("ok", "checked-hash")
    # Same size and mtime, different bytes: only the hash can tell, and it does.
    st = src.stat()
    src.write_text(src.read_text().replace("'a'", "'z'"))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    (f,) = check_bytecode(paths=[src]).files
    assert f.status == "stale"
    assert "hash" in f.reason


def test_unchecked_hash_pyc_is_trusted(pkg: Path) -> None:
    src = pkg / "fmbcpkg" / "a.py"
    pyc(src, mode="UNCHECKED_HASH")
    src.write_text("X = 'edited, never noticed by the importer'\n")
    (f,) = check_bytecode(paths=[src]).files
    assert (f.status, f.invalidation) == ("ok", "unchecked-hash")
    assert "not compared" in f.reason


@pytest.mark.parametrize("level", [1, 2])
def test_optimization_levels(pkg: Path, level: int) -> None:
    for src in sources(pkg):
        written = pyc(src, optimize=level)
        assert written.endswith(f".{TAG}.opt-{level}.pyc")
    assert counts(check_bytecode(paths=[pkg], optimization=level)) == {"ok": 3}
    assert counts(check_bytecode(paths=[pkg], optimization=0)) == {"missing": 3}
    other = 2 if level == 1 else 1
    report = check_bytecode(paths=[pkg], optimization=other)
    assert counts(report) == {"missing": 3}
    assert all(f.cache and f.cache.endswith(f"opt-{other}.pyc") for f in report.files)


def test_default_optimization_follows_interpreter(pkg: Path) -> None:
    assert check_bytecode(paths=[pkg]).optimization == sys.flags.optimize


def test_pycache_prefix(pkg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = tmp_path / "prefix"
    monkeypatch.setattr(sys, "pycache_prefix", str(prefix))
    for src in sources(pkg):
        pyc(src)
    assert not list(pkg.rglob("__pycache__")), "the prefix keeps pycs out of the tree"
    report = check_bytecode(paths=[pkg])
    assert counts(report) == {"ok": 3}
    assert report.pycache_prefix == str(prefix)
    assert all(f.cache and f.cache.startswith(str(prefix) + os.sep) for f in report.files)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    assert counts(check_bytecode(paths=[pkg])) == {"missing": 3}


def test_sourceless_pyc(tmp_path: Path) -> None:
    only = write(tmp_path / "only.py", "X = 1\n")
    pyc(only, cfile=str(tmp_path / "only.pyc"))
    only.unlink()
    shadowed = write(tmp_path / "both.py", "Y = 2\n")
    pyc(shadowed, cfile=str(tmp_path / "both.pyc"))  # ignored: the source wins
    report = check_bytecode(paths=[tmp_path])
    assert counts(report) == {"sourceless": 1, "missing": 1}
    (f,) = report.by_status("sourceless")
    assert f.source is None
    assert f.cache == str(tmp_path / "only.pyc")


def test_symlink_loop_and_alias_are_reported_not_followed_forever(pkg: Path) -> None:
    for src in sources(pkg):
        pyc(src)
    (pkg / "fmbcpkg" / "sub" / "up").symlink_to(pkg / "fmbcpkg")  # a loop back to an ancestor
    (pkg / "alias").symlink_to(pkg / "fmbcpkg" / "sub")  # same directory by two names
    (pkg / "self.py").symlink_to(pkg / "self.py")  # ELOOP
    (pkg / "gone.py").symlink_to(pkg / "nowhere.py")  # dangling
    report = check_bytecode(paths=[pkg])
    assert counts(report) == {"ok": 3}
    reasons = {Path(p.path).name: p.reason for p in report.problems}
    assert reasons["up"].startswith("symlink loop")
    assert reasons["self.py"] == "symlink loop"
    assert reasons["gone.py"] == "dangling symlink"
    assert "alias" not in reasons


def test_side_effect_module_is_not_executed(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    write(
        tmp_path / "tree" / "evil.py",
        f"open({str(marker)!r}, 'w').write('ran')\nraise SystemExit('must not run')\n",
    )
    before = snapshot(tmp_path)
    report = check_bytecode(paths=[tmp_path / "tree"])
    assert counts(report) == {"missing": 1}
    assert not marker.exists()
    assert "evil" not in sys.modules
    assert snapshot(tmp_path) == before, "a check writes nothing"


def test_check_writes_nothing(pkg: Path) -> None:
    pyc(pkg / "fmbcpkg" / "a.py")
    (pkg / "fmbcpkg" / "__init__.py").write_text("VALUE = 2  # edited\n")
    before = snapshot(pkg)
    check_bytecode(paths=[pkg])
    check_bytecode(paths=[pkg], optimization=2)
    assert snapshot(pkg) == before


def test_unwritable_cache_dir_as_unprivileged_user() -> None:
    with shared_tmpdir() as root:
        # ro/: __pycache__ exists but is not writable by the checker; one module compiled.
        write(root / "ro" / "ok.py", "A = 1\n")
        write(root / "ro" / "stale.py", "B = 2\n")
        write(root / "ro" / "new.py", "C = 3\n")
        pyc(root / "ro" / "ok.py")
        pyc(root / "ro" / "stale.py")
        os.utime(root / "ro" / "stale.py", (1, 1))
        # nocache/: no __pycache__, and the directory itself is not writable: cannot create it.
        write(root / "nocache" / "d.py", "D = 4\n")
        # open/: world-writable, so a missing pyc is just missing.
        write(root / "open" / "e.py", "E = 5\n")
        make_readable(root)
        os.chmod(root / "open", 0o777)
        # Read-only for everyone (root still writes: its rights ignore mode bits).
        os.chmod(root / "ro" / "__pycache__", 0o555)
        os.chmod(root / "nocache", 0o555)

        def check() -> dict[str, object]:
            r = check_bytecode(paths=[root])
            return {
                "counts": counts(r),
                "files": {Path(f.source or "").name: f.status for f in r.files},
            }

        result = run_unprivileged(check)
        assert result["counts"] == {"ok": 1, "unwritable": 3, "missing": 1}
        assert result["files"] == {
            "ok.py": "ok",
            "stale.py": "unwritable",
            "new.py": "unwritable",
            "d.py": "unwritable",
            "e.py": "missing",
        }
        if os.geteuid() == 0:
            # root may write anywhere: the same tree is merely missing/stale for it.
            assert counts(check_bytecode(paths=[root])) == {"ok": 1, "stale": 1, "missing": 3}


def test_unreadable_directory_as_unprivileged_user() -> None:
    with shared_tmpdir() as root:
        write(root / "visible" / "a.py", "A = 1\n")
        write(root / "hidden" / "b.py", "B = 2\n")
        make_readable(root)
        os.chmod(root / "hidden", 0o700)
        if os.geteuid() != 0:
            pytest.skip("needs root to own a directory the unprivileged child cannot read")

        def check() -> dict[str, object]:
            r = check_bytecode(paths=[root])
            return {"counts": counts(r), "problems": [(p.path, p.reason) for p in r.problems]}

        result = run_unprivileged(check)
        assert result["counts"] == {"unwritable": 1}  # visible/a.py: root-owned 0755 directory
        ((path, reason),) = result["problems"]
        assert path == str(root / "hidden")
        assert reason.startswith("unreadable directory")


def test_compile_bytecode_writes_only_what_is_needed(pkg: Path) -> None:
    good = pyc(pkg / "fmbcpkg" / "__init__.py")
    good_mtime = os.stat(good).st_mtime_ns
    write(pkg / "fmbcpkg" / "broken.py", "def f(:\n")
    report = check_bytecode(paths=[pkg])
    assert counts(report) == {"ok": 1, "missing": 3}
    result = compile_bytecode(report)
    assert len(result.written) == 2
    assert all(os.path.exists(p) for p in result.written)
    (failure,) = result.failed
    assert failure.syntax_error
    assert failure.source == str(pkg / "fmbcpkg" / "broken.py")
    assert not result.ok
    assert "1 failed" in result.summary()
    assert os.stat(good).st_mtime_ns == good_mtime, "valid pycs are not rewritten"
    after = check_bytecode(paths=[pkg])
    assert counts(after) == {"ok": 3, "missing": 1}


def test_compile_bytecode_keeps_hash_based_mode(pkg: Path) -> None:
    src = pkg / "fmbcpkg" / "a.py"
    pyc(src, mode="CHECKED_HASH")
    src.write_text("def f():\n    return 'changed'\n")
    report = check_bytecode(paths=[src])
    assert counts(report) == {"stale": 1}
    result = compile_bytecode(report)
    assert result.ok
    (f,) = check_bytecode(paths=[src]).files
    assert (f.status, f.invalidation) == ("ok", "checked-hash")


def test_compile_bytecode_from_paths_with_workers(pkg: Path) -> None:
    write(pkg / "fmbcpkg" / "broken.py", "x = (\n")
    result = compile_bytecode([pkg], workers=2)
    assert len(result.written) == 3
    assert [f.syntax_error for f in result.failed] == [True]
    assert counts(check_bytecode(paths=[pkg])) == {"ok": 3, "missing": 1}


def test_compile_workers_that_cannot_start_are_failures(
    pkg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "executable", str(pkg / "no-such-python"))
    result = compile_bytecode([pkg], workers=2)
    assert result.written == ()
    assert len(result.failed) == 3
    assert all("cannot start a compile worker" in f.error for f in result.failed)


def test_a_compile_worker_that_hangs_is_stopped(pkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from forkmem import _pycompile

    # A real worker, with a bound no interpreter start-up can meet: it is killed, not awaited.
    monkeypatch.setattr(_pycompile, "_WORKER_TIMEOUT", 0.001)
    result = compile_bytecode([pkg], workers=2)
    assert result.written == ()
    assert len(result.failed) == 3
    assert all("took longer than" in f.error for f in result.failed)
    assert counts(check_bytecode(paths=[pkg])) == {"missing": 3}


def test_compile_bytecode_at_report_optimization(pkg: Path) -> None:
    report = check_bytecode(paths=[pkg], optimization=2)
    result = compile_bytecode(report)
    assert all(p.endswith(".opt-2.pyc") for p in result.written)
    assert counts(check_bytecode(paths=[pkg], optimization=2)) == {"ok": 3}
    assert counts(check_bytecode(paths=[pkg], optimization=0)) == {"missing": 3}


def test_compile_bytecode_failure_to_write_is_reported(pkg: Path) -> None:
    src = pkg / "fmbcpkg" / "a.py"
    cache = Path(importlib.util.cache_from_source(str(src)))
    cache.parent.mkdir()
    cache.symlink_to(pkg / "elsewhere")  # py_compile refuses to write through a symlink
    result = compile_bytecode(check_bytecode(paths=[src]))
    (failure,) = result.failed
    assert not failure.syntax_error
    assert not (pkg / "elsewhere").exists()


def _import_from(root: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the import itself must not cache
    return importlib.import_module(name)


def test_loaded_modules(pkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pyc(pkg / "fmbcpkg" / "a.py")
    mod_pkg = _import_from(pkg, "fmbcpkg", monkeypatch)
    mod_a = _import_from(pkg, "fmbcpkg.a", monkeypatch)
    try:
        report = check_bytecode(modules=[mod_pkg, "fmbcpkg.a", "sys"])
        assert report.scope == "modules"
        assert {f.module: f.status for f in report.files} == {
            "fmbcpkg": "missing",
            "fmbcpkg.a": "ok",
        }
        (skip,) = report.skipped
        assert (skip.name, skip.reason) == ("sys", "built-in module: nothing to cache")
        # Default: everything in sys.modules, ours included.
        everything = check_bytecode()
        by_module = {f.module: f for f in everything.files}
        assert by_module["fmbcpkg.a"].status == "ok"
        assert by_module["forkmem.bytecode"].source == forkmem.bytecode.__file__
        assert everything.counts["ok"] + everything.counts["missing"] >= 2
    finally:
        for name in ("fmbcpkg.a", "fmbcpkg"):
            sys.modules.pop(name, None)
    assert mod_a.f() == "a"


def test_lazily_loaded_module_is_checked_not_executed(tmp_path: Path) -> None:
    # importlib.util.LazyLoader runs a module on its first attribute access: the check must not.
    with lazy_module(tmp_path, "lazy_fm") as (module, src, marker):
        by_name = check_bytecode(modules=[module, "lazy_fm"])
        everything = check_bytecode()
        assert not marker.exists(), "the lazy module was executed"
        assert [(f.module, f.status) for f in by_name.files] == [("lazy_fm", "missing")]
        assert [f.source for f in everything.files if f.module == "lazy_fm"] == [str(src)]


def test_namespace_and_zip_modules_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "nsroot" / "nspkg_fm" / "mod.py", "X = 1\n")
    archive = tmp_path / "lib.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("zipped_fm.py", "Y = 2\n")
    monkeypatch.syspath_prepend(str(archive))
    ns = _import_from(tmp_path / "nsroot", "nspkg_fm", monkeypatch)
    zipped = _import_from(tmp_path, "zipped_fm", monkeypatch)
    try:
        report = check_bytecode(modules=[ns, zipped])
        reasons = {s.name: s.reason for s in report.skipped}
        assert reasons["nspkg_fm"].startswith("namespace package")
        assert reasons["zipped_fm"].startswith("zip import")
        assert report.files == ()
        paths_report = check_bytecode(paths=[archive])
        assert paths_report.skipped[0].reason.startswith("zip archive")
    finally:
        sys.modules.pop("nspkg_fm", None)
        sys.modules.pop("zipped_fm", None)


def test_main_script_is_skipped() -> None:
    main = types.ModuleType("__main__")
    main.__file__ = "/srv/app.py"
    main.__spec__ = None
    report = check_bytecode(modules=[main])
    assert report.skipped[0].reason.startswith("__main__ run as a script")


def test_dont_write_bytecode_is_reported(pkg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    report = check_bytecode(paths=[pkg])
    assert report.dont_write_bytecode
    assert "never writes pycs" in report.summary()
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert not check_bytecode(paths=[pkg]).dont_write_bytecode


def test_json_round_trip(pkg: Path) -> None:
    pyc(pkg / "fmbcpkg" / "a.py")
    report = check_bytecode(paths=[pkg])
    data = json.loads(report.to_json())
    assert data["counts"]["ok"] == 1
    assert data["counts"]["missing"] == 2
    assert data["ok"] is False
    assert len(data["files"]) == 3
    assert data["uncached_bytes"] == report.uncached_bytes
    assert data == report.as_dict()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"paths": "/no/such/dir"}, "no such file"),
        ({"paths": []}, "paths is empty"),
        ({"paths": 3}, "paths must be"),
        ({"paths": ["."], "modules": []}, "not both"),
        ({"optimization": 3}, "optimization"),
        ({"modules": ["forkmem_never_loaded_x"]}, "not loaded"),
        ({"modules": [42]}, "modules must"),
        ({"modules": 42}, "modules must"),
        ({"optimization": 1.0}, "optimization"),
        ({"optimization": True}, "optimization"),
        ({"paths": b"/tmp"}, "not bytes"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(forkmem.InvalidArgument, match=message) as info:
        check_bytecode(**kwargs)  # type: ignore[arg-type]
    assert isinstance(info.value, ValueError)


def test_compile_bytecode_bad_arguments(pkg: Path) -> None:
    with pytest.raises(forkmem.InvalidArgument):
        compile_bytecode([pkg], workers=-1)
    with pytest.raises(forkmem.InvalidArgument):
        compile_bytecode([pkg], invalidation_mode="sometimes")
    with pytest.raises(ValueError, match="status"):
        check_bytecode(paths=[pkg]).by_status("fine")  # type: ignore[arg-type]


def test_warn_if_missing_bytecode(
    pkg: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pyc(pkg / "fmbcpkg" / "a.py")
    mod_pkg = _import_from(pkg, "fmbcpkg", monkeypatch)
    mod_a = _import_from(pkg, "fmbcpkg.a", monkeypatch)
    try:
        with caplog.at_level(logging.WARNING, logger="forkmem"):
            report = forkmem.warn_if_missing_bytecode(modules=[mod_pkg, mod_a])
        assert report is not None
        assert counts(report) == {"ok": 1, "missing": 1}
        records = [r for r in caplog.records if r.name == "forkmem"]
        assert len(records) == 1
        text = records[0].getMessage()
        assert "1 of 2 loaded modules" in text
        assert "1 missing" in text
        assert f"forkmem bytecode --fix {pkg}" in text
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="forkmem"):
            assert forkmem.warn_if_missing_bytecode(modules=[mod_a]) is None
        assert not caplog.records
    finally:
        sys.modules.pop("fmbcpkg.a", None)
        sys.modules.pop("fmbcpkg", None)


def test_files_views_agree(pkg: Path) -> None:
    pyc(pkg / "fmbcpkg" / "a.py")
    stale = Path(pyc(pkg / "fmbcpkg" / "__init__.py"))
    stale.write_bytes(b"\x00" * 16)
    report = check_bytecode(paths=[pkg])
    files = report.files
    assert files is report.files, "built once"
    assert [f.source for f in files] == sorted(str(p) for p in sources(pkg))
    assert {s: sum(f.status == s for f in files) for s in report.counts} == dict(report.counts)
    assert report.uncached == tuple(f for f in files if f.status in ("missing", "stale"))
    assert report.by_status("stale")[0].source == str(pkg / "fmbcpkg" / "__init__.py")
    assert report.uncached_bytes == sum(f.size for f in report.uncached)


def test_loaded_module_whose_source_vanished(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = write(tmp_path / "vanishing_fm.py", "X = 1\n")
    module = _import_from(tmp_path, "vanishing_fm", monkeypatch)
    try:
        src.unlink()
        report = check_bytecode(modules=[module])
        assert report.files == ()
        (problem,) = report.problems
        assert problem.path == str(src)
        assert problem.reason.startswith("cannot stat")
    finally:
        sys.modules.pop("vanishing_fm", None)


def test_check_hash_based_pycs_always(pkg: Path) -> None:
    # --check-hash-based-pycs always makes the importer check even unchecked pycs; so do we.
    import subprocess

    src = pkg / "fmbcpkg" / "a.py"
    pyc(src, mode="UNCHECKED_HASH")
    src.write_text("X = 'edited'\n")
    code = (
        "import sys; from forkmem.bytecode import check_bytecode; "
        "r = check_bytecode(paths=[sys.argv[1]]); print(r.check_source, r.files[0].status)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "--check-hash-based-pycs", "always", "-c", code, str(src)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=True,
    ).stdout.split()
    assert out == ["always", "stale"]
    assert status_of(check_bytecode(paths=[src]), src) == "ok"  # this interpreter: default


def test_frozen_module_is_skipped() -> None:
    # _frozen_importlib is frozen on every supported CPython (os too from 3.11 on).
    report = check_bytecode(modules=["_frozen_importlib"])
    assert report.files == ()
    (skip,) = report.skipped
    assert (skip.name, skip.reason) == ("_frozen_importlib", "frozen module: nothing to cache")
