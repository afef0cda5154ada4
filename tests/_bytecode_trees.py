"""Helpers for the bytecode tests: real source trees, real pycs, an unprivileged child."""

from __future__ import annotations

import os
import py_compile
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from _forking import run_forked

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

NOBODY = 65534


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def pyc(
    source: Path, *, optimize: int = 0, mode: str = "TIMESTAMP", cfile: str | None = None
) -> str:
    """Compile ``source`` to its cache path (honours sys.pycache_prefix like the importer)."""
    return py_compile.compile(
        str(source),
        cfile=cfile,
        doraise=True,
        optimize=optimize,
        invalidation_mode=py_compile.PycInvalidationMode[mode],
    )


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its (size, mtime_ns), symlinks not followed."""
    out: dict[str, tuple[int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


@contextmanager
def shared_tmpdir() -> Iterator[Path]:
    """A temporary directory another user can traverse (pytest's tmp_path is 0700)."""
    d = tempfile.mkdtemp(prefix="forkmem-bc-", dir="/tmp")
    os.chmod(d, 0o755)
    try:
        yield Path(d)
    finally:
        for dirpath, dirnames, _ in os.walk(d):
            for name in dirnames:
                p = os.path.join(dirpath, name)
                if not os.path.islink(p):
                    os.chmod(p, 0o755)
        shutil.rmtree(d, ignore_errors=True)


def make_readable(root: Path) -> None:
    """World-readable files and traversable directories, so a child as nobody can look."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o755)
        for name in filenames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o644)


def run_unprivileged(fn: Callable[[], Any], *, timeout: float = 30.0) -> Any:
    """Run ``fn`` in a forked child as an unprivileged user; return its JSON-able result.

    As root the child drops to uid/gid 65534 (nobody) for good; as any other user it already
    is unprivileged. Exceptions in the child fail the test with the child's traceback.
    """
    return run_forked(fn, timeout=timeout, before_child=_drop_root)


def _drop_root() -> None:
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(NOBODY)
        os.setuid(NOBODY)
