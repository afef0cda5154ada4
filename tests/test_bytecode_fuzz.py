"""Fuzz: check + --fix over generated hostile trees, as root and as an unprivileged user.

Each example builds a tree of directories, sources, FIFOs and symlinks (inside the tree, out
of it, back to an ancestor, dangling, to a FIFO, a symlinked ``__pycache__``) next to an
"outside" directory anyone may write. check_bytecode() and compile_bytecode() run in a forked
child (as uid 65534 too, when the test runs as root) under a deadline. Properties: nothing under
"outside" changes, the child never hangs, and nothing but a forkmem error escapes.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import forkmem
from _bytecode_trees import NOBODY, snapshot
from forkmem.bytecode import check_bytecode, compile_bytecode

# Everything the child runs is imported here, before the fork: as uid 65534 the child may not
# be able to read this interpreter's standard library (a home-directory pyenv, say).
for _name in ("concurrent.futures.thread", "marshal", "subprocess", "forkmem._pycompile"):
    __import__(_name)

pytestmark = pytest.mark.linux_only

DEADLINE = 20.0

# (kind, where): where picks the parent directory among those made so far.
KINDS = (
    "dir",
    "source",
    "broken-source",
    "fifo-source",
    "pycache-dir",
    "link-dir-inside",
    "link-dir-outside",
    "link-pycache-outside",
    "link-pycache-inside",
    "link-loop",
    "link-dangling",
    "link-fifo-source",
    "link-source-outside",
    "fifo-pyc",
    "link-pyc-outside",
)
entries = st.lists(st.tuples(st.sampled_from(KINDS), st.integers(0, 7)), min_size=1, max_size=14)


def _outside(base: Path) -> Path:
    out = base / "outside"
    (out / "pkg" / "__pycache__").mkdir(parents=True)
    (out / "pkg" / "mod.py").write_text("VICTIM = True\n")
    (out / "lib.py").write_text("LIB = 1\n")
    os.mkfifo(out / "pipe")
    for dirpath, dirnames, filenames in os.walk(out):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o777)  # writable by the fuzzed user too
        for name in filenames:
            p = os.path.join(dirpath, name)
            os.chmod(p, 0o666)
    os.chmod(out, 0o777)
    return out


def _build(tree: Path, outside: Path, plan: list[tuple[str, int]]) -> None:
    dirs = [tree]
    tag = sys.implementation.cache_tag
    for i, (kind, where) in enumerate(plan):
        parent = dirs[where % len(dirs)]
        p = parent / f"e{i}"
        if kind == "dir":
            p.mkdir()
            dirs.append(p)
        elif kind == "source":
            (parent / f"m{i}.py").write_text(f"X = {i}\n")
        elif kind == "broken-source":
            (parent / f"m{i}.py").write_text("def (:\n")
        elif kind == "fifo-source":
            os.mkfifo(parent / f"f{i}.py")
        elif kind == "pycache-dir":
            with contextlib.suppress(FileExistsError):
                (parent / "__pycache__").mkdir()
        elif kind == "link-dir-inside":
            os.symlink(dirs[(where + 1) % len(dirs)], p)
        elif kind == "link-dir-outside":
            os.symlink(outside / "pkg", p)
        elif kind == "link-pycache-outside":
            with contextlib.suppress(FileExistsError):
                os.symlink(outside / "pkg" / "__pycache__", parent / "__pycache__")
        elif kind == "link-pycache-inside":
            target = tree / f"cache{i}"
            target.mkdir()
            with contextlib.suppress(FileExistsError):
                os.symlink(target, parent / "__pycache__")
        elif kind == "link-loop":
            os.symlink(tree, p)
        elif kind == "link-dangling":
            os.symlink(tree / "nowhere", parent / f"d{i}.py")
        elif kind == "link-fifo-source":
            os.symlink(outside / "pipe", parent / f"p{i}.py")
        elif kind == "link-source-outside":
            os.symlink(outside / "lib.py", parent / f"l{i}.py")
        elif kind == "fifo-pyc":
            cache = parent / "__pycache__"
            with contextlib.suppress(FileExistsError):
                cache.mkdir()
            with contextlib.suppress(OSError):  # a symlinked __pycache__ leads outside
                if not cache.is_symlink():
                    (parent / f"q{i}.py").write_text("Q = 1\n")
                    os.mkfifo(cache / f"q{i}.{tag}.pyc")
        elif kind == "link-pyc-outside":
            cache = parent / "__pycache__"
            with contextlib.suppress(FileExistsError):
                cache.mkdir()
            if not cache.is_symlink():
                (parent / f"r{i}.py").write_text("R = 1\n")
                os.symlink(outside / "lib.py", cache / f"r{i}.{tag}.pyc")


def _chown_tree(tree: Path, uid: int) -> None:
    os.lchown(tree, uid, uid)
    for dirpath, dirnames, filenames in os.walk(tree):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, uid)


def _content(outside: Path) -> dict[str, object]:
    state: dict[str, object] = dict(snapshot(outside))
    for p in sorted(outside.rglob("*")):
        if p.is_file() and not p.is_symlink():
            state[f"data:{p}"] = p.read_bytes()
    return state


def _child(tree: Path, uid: int | None, workers: int) -> str:
    """Forked child: drop to ``uid``, check and fix; returns 'ok' or the escaped error."""
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    try:
        report = check_bytecode(paths=[tree])
        compile_bytecode(report, workers=workers)
        check_bytecode(paths=[tree])
    except forkmem.ForkmemError:
        return "ok"  # a typed error is an allowed outcome
    except BaseException:
        return traceback.format_exc()
    return "ok"


def _run(tree: Path, uid: int | None, workers: int) -> str:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            os.write(w, json.dumps(_child(tree, uid, workers)).encode())
        finally:
            os._exit(0)
    os.close(w)
    try:
        ready, _, _ = select.select([r], [], [], DEADLINE)
        data = b""
        if ready:
            while chunk := os.read(r, 65536):
                data += chunk
    finally:
        os.close(r)
        if not data:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert ready, f"check/--fix hung for {DEADLINE} s"
    assert data, "the child died without reporting"
    return str(json.loads(data))


USERS = [pytest.param(None, id="as-caller"), pytest.param(NOBODY, id="as-nobody")]


@pytest.mark.parametrize("uid", USERS)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() with xdist's threads
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=entries, workers=st.sampled_from([0, 0, 0, 2]))
def test_fuzz_no_write_outside_no_hang_no_untyped_error(
    uid: int | None, plan: list[tuple[str, int]], workers: int
) -> None:
    if uid is not None and os.geteuid() != 0:
        pytest.skip("dropping to an unprivileged uid needs root; the caller is unprivileged")
    base = Path(tempfile.mkdtemp(prefix="forkmem-fuzz-", dir="/tmp"))
    try:
        os.chmod(base, 0o755)
        outside = _outside(base)
        tree = base / "tree"
        tree.mkdir()
        _build(tree, outside, plan)
        if uid is not None:
            _chown_tree(tree, uid)  # the unprivileged user owns the tree it fixes
        before = _content(outside)
        assert _run(tree, uid, workers) == "ok"
        assert _content(outside) == before, "a write landed outside the tree"
    finally:
        shutil.rmtree(base, ignore_errors=True)
