"""Building the bytes of a pyc from a source file, with the standard library only.

The header is the one ``importlib`` reads (``importlib.util.MAGIC_NUMBER``, the PEP 552 flags,
then the source's mtime and size or its ``importlib.util.source_hash``), followed by
``marshal.dumps`` of ``compile()``'s code object, as ``py_compile`` builds it. Building is kept
apart from writing: forkmem writes the bytes itself (`forkmem._confine`), never through a
path that could follow a symlink out of the tree.

Opening a source never blocks and never opens a device: it must be a regular file before the
open (``stat``) and after it (``fstat`` on the descriptor, ``O_NONBLOCK`` so a FIFO swapped in
between opens at once and is then refused).

Run as a script (``python -I _pycbuild.py``) it is a compile worker: a JSON list of
``[source, optimization, mode]`` on stdin, a marshal list of ``[source, pyc bytes or None,
error or None, syntax error?, source mode]`` on stdout. It needs no forkmem import.
"""

from __future__ import annotations

import errno
import importlib.util
import marshal
import os
import stat
import struct
import sys
import warnings

TYPE_CHECKING = False  # typing stays off the check's path (see forkmem._bytecode_scan)
if TYPE_CHECKING:
    from typing import Any

__all__: list[str] = []

MODES = ("timestamp", "checked-hash", "unchecked-hash")
_FLAGS = {"timestamp": 0b00, "checked-hash": 0b11, "unchecked-hash": 0b01}
_READ = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
)


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("a FIFO", ...)."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class NotRegular(OSError):
    """The path is a FIFO, device, socket or directory: never read, never compiled."""


def _regular(st: os.stat_result, path: str) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = file_kind(st.st_mode)
        raise NotRegular(errno.EINVAL, f"{kind}, not a regular file: skipped", path)


def read_source(path: str) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file and the ``fstat`` of what was read; never blocks."""
    _regular(os.stat(path), path)  # a device is never even opened (opening can act on it)
    fd = os.open(path, _READ)
    try:
        st = os.fstat(fd)
        _regular(st, path)  # swapped for a FIFO between the stat and the open
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks), st


def build(source: str, optimization: int, mode: str) -> tuple[bytes, int]:
    """(pyc bytes, the source's st_mode) for ``source``; raises SyntaxError or OSError."""
    data, st = read_source(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarnings belong to the package's authors
        code = compile(data, source, "exec", dont_inherit=True, optimize=optimization)
    if mode == "timestamp":
        tail = struct.pack("<II", int(st.st_mtime) & 0xFFFFFFFF, st.st_size & 0xFFFFFFFF)
    else:
        tail = importlib.util.source_hash(data)
    header = importlib.util.MAGIC_NUMBER + struct.pack("<I", _FLAGS[mode]) + tail
    return header + marshal.dumps(code), st.st_mode


def build_row(source: str, optimization: int, mode: str) -> list[Any]:
    """``[source, bytes or None, error or None, syntax error?, source mode]``, never raises."""
    try:
        data, st_mode = build(source, optimization, mode)
    except (SyntaxError, ValueError) as exc:  # ValueError: null bytes on older Pythons
        import traceback  # only for a broken source: it costs the check's start-up ~1 ms

        message = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return [source, None, message, True, 0]
    except OSError as exc:
        return [source, None, exc.strerror or str(exc), False, 0]
    except (MemoryError, RecursionError) as exc:  # a pathological source
        return [source, None, f"{type(exc).__name__}: cannot compile", False, 0]
    return [source, data, None, False, st_mode]


def _worker() -> None:
    import json

    jobs = json.load(sys.stdin)
    marshal.dump([build_row(src, opt, mode) for src, opt, mode in jobs], sys.stdout.buffer)


if __name__ == "__main__":
    _worker()
