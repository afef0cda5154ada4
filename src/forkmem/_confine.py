"""Writing a file strictly inside a tree: no symlink may carry a write out of it.

Operators run ``forkmem bytecode --fix`` as root on trees other users own. A symlinked
``__pycache__`` (or source directory) pointing into another package would make a plain
``open(cache_path, "wb")`` (and ``py_compile``, and ``python -m compileall``) write a root-owned
pyc there, compiled from the attacker's source. So forkmem never writes by path:

1. resolve the target directory and compare it with the resolved tree root: outside -> refused;
2. open the root, then each component of the resolved relative path, with ``O_NOFOLLOW`` and
   ``dir_fd`` (creating missing ones with ``mkdir(dir_fd=)``): a component swapped for a
   symlink after step 1 fails with ``ELOOP``/``ENOTDIR`` -> refused;
3. write a new temporary file in that directory (``O_CREAT | O_EXCL | O_NOFOLLOW``) and
   ``os.replace`` it over the name, both relative to the verified directory's descriptor: an
   existing symlink or hard link at the name is replaced, never written through.
"""

from __future__ import annotations

import errno
import os
import stat

__all__: list[str] = []

# try/except/pass below, not contextlib.suppress: the check imports this module, and contextlib
# (with the functools and collections it loads) would cost its fresh process ~2 ms.

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR = os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC
_NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC


class Refused(PermissionError):
    """The write would leave the tree (or the tree changed under it); nothing was written."""


def supported() -> bool:
    """Whether this platform has what confined writes need (descriptor-relative calls)."""
    return bool(_NOFOLLOW and _DIRECTORY) and os.open in os.supports_dir_fd


def within(path: str, root: str) -> bool:
    """Whether the resolved ``path`` is ``root`` or below it (``root`` already resolved)."""
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def escape(directory: str, root: str) -> str | None:
    """Why a file written in ``directory`` would land outside ``root`` (resolved), or None."""
    real = os.path.realpath(directory)
    if within(real, root):
        return None
    return f"{directory} resolves to {real}, outside the tree {root}"


def _enter(fd: int, part: str, where: str) -> int:
    """Open (creating it if missing) directory ``part`` under ``fd``; closes ``fd``."""
    try:
        try:
            return os.open(part, _DIR, dir_fd=fd)
        except FileNotFoundError:
            try:  # noqa: SIM105 (see the imports)
                os.mkdir(part, 0o777, dir_fd=fd)
            except FileExistsError:
                pass  # another writer made it meanwhile
            return os.open(part, _DIR, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise Refused(
                errno.EPERM, f"{where} is a symlink or not a directory: not written through"
            ) from None
        raise
    finally:
        os.close(fd)


def _no_link_at(fd: int, name: str, target: str) -> None:
    # Like py_compile: an existing symlink or special file at the name is refused, not
    # replaced (os.replace would never write through it, but it may be there on purpose).
    try:
        st = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        what = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a regular file"
        raise Refused(errno.EEXIST, f"{target} is {what}: refused, not replaced")


def write(root: str, target: str, data: bytes, mode: int) -> None:
    """Atomically write ``data`` at ``target``, which must resolve inside ``root`` (resolved).

    ``mode`` is the permission of a new file (umask applies, as for the importer's pycs).
    Raises `Refused` when the write would leave the tree, OSError when it fails.
    """
    if not supported():
        raise Refused(errno.ENOTSUP, "this platform cannot confine writes (no O_NOFOLLOW/dir_fd)")
    directory, name = os.path.split(target)
    if not name or name in (os.curdir, os.pardir):
        raise Refused(errno.EINVAL, f"{target!r} does not name a file")
    real = os.path.realpath(directory)  # resolved once: what is compared is what is walked
    if not within(real, root):
        raise Refused(errno.EPERM, f"refused: {directory} resolves to {real}, outside {root}")
    rel = os.path.relpath(real, root)
    fd = os.open(root, _DIR)
    where = root
    for part in [] if rel == os.curdir else rel.split(os.sep):
        where = os.path.join(where, part)
        fd = _enter(fd, part, where)
    try:
        _no_link_at(fd, name, target)
        tmp = f".{name}.{os.urandom(6).hex()}.tmp"  # what secrets.token_hex does
        out = os.open(tmp, _NEW, mode & 0o666, dir_fd=fd)
        try:
            with open(out, "wb") as f:
                f.write(data)
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            try:  # noqa: SIM105 (see the imports)
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
