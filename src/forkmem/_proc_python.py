"""What Python another process runs and where it imports from, read from ``/proc`` only.

Nothing of the target is imported or run: its interpreter comes from ``/proc/PID/exe`` and the
extension modules it has mapped (``/proc/PID/maps``: ``*.cpython-312-x86_64-linux-gnu.so``), its
virtual environment from its command line, ``VIRTUAL_ENV`` and ``pyvenv.cfg``, and its import
path is rebuilt the way ``site`` builds it. Each file it could not read is named in
``unreadable``, never guessed.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from forkmem._common import check_pid
from forkmem._pycbuild import read_source
from forkmem.errors import NoSuchProcess

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["PythonProcess", "inspect_python"]

# cpython-312, cpython-313t (free-threaded) in extension module names and bytecode caches.
_TAG = re.compile(r"\.cpython-3(\d+)(t?)-")
_LIBPYTHON = re.compile(r"/libpython3\.(\d+)(t?)\.so")
_EXE = re.compile(r"python3\.(\d+)(t?)$")


@dataclass(frozen=True, slots=True)
class PythonProcess:
    """Another process's Python, as far as ``/proc`` tells (``None``: not known)."""

    pid: int
    exe: str | None
    argv: tuple[str, ...] | None
    cwd: str | None
    environ: dict[str, str] | None
    version: tuple[int, int] | None
    free_threaded: bool | None
    venv: str | None
    base_prefix: str | None
    script_dir: str | None
    pythonpath: tuple[str, ...]
    site_packages: tuple[str, ...]
    extensions: int
    thp_disabled: bool | None
    flags: frozenset[str]
    unreadable: tuple[str, ...]

    @property
    def is_python(self) -> bool:
        return self.version is not None

    @property
    def cache_tag(self) -> str | None:
        if self.version is None:
            return None
        return f"cpython-{self.version[0]}{self.version[1]}{'t' if self.free_threaded else ''}"


def _read(path: str, unreadable: list[str]) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        unreadable.append(f"{path}: {_why(exc)}")
        return None


def _why(exc: OSError) -> str:
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied (another user's process: run as that user or root)"
    return exc.strerror or str(exc)


def _link(path: str, unreadable: list[str]) -> str | None:
    try:
        return os.readlink(path)
    except OSError as exc:
        unreadable.append(f"{path}: {_why(exc)}")
        return None


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _pyvenv(venv: str) -> dict[str, str]:
    try:
        raw, _ = read_source(os.path.join(venv, "pyvenv.cfg"))  # a regular file, or nothing
    except OSError:
        return {}
    lines = raw.decode("utf-8", "replace").splitlines()
    out = {}
    for line in lines:
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip().lower()] = value.strip()
    return out


def _venv_of(candidates: list[str | None]) -> str | None:
    for candidate in candidates:
        if candidate and os.path.isfile(os.path.join(candidate, "pyvenv.cfg")):
            return candidate
    return None


def inspect_python(pid: int) -> PythonProcess:
    """Read what `PythonProcess` holds for ``pid``; raises only if ``pid`` is gone."""
    pid = check_pid(pid)
    proc = f"/proc/{pid}"
    if not os.path.isdir(proc):
        raise NoSuchProcess(f"no process {pid}", pid=pid)
    unreadable: list[str] = []
    exe = _link(f"{proc}/exe", unreadable)
    cwd = _link(f"{proc}/cwd", unreadable)
    raw = _read(f"{proc}/cmdline", unreadable)
    argv = tuple(_decode(a) for a in raw.split(b"\0")[:-1]) if raw is not None else None
    raw = _read(f"{proc}/environ", unreadable)
    environ = None
    if raw is not None:
        environ = {}
        for item in raw.split(b"\0"):
            key, sep, value = item.partition(b"=")
            if sep:
                environ[_decode(key)] = _decode(value)

    version = free = None
    extensions = 0
    mapped_dirs: list[str] = []
    raw = _read(f"{proc}/maps", unreadable)
    for line in (raw or b"").splitlines():
        fields = line.split(maxsplit=5)
        path = _decode(fields[5]) if len(fields) == 6 else ""  # anonymous maps have no path
        m = _TAG.search(path) or _LIBPYTHON.search(path)
        if m:
            version, free = (3, int(m.group(1))), m.group(2) == "t"
            if _TAG.search(path):
                extensions += 1
        if "/site-packages/" in path:
            mapped_dirs.append(path.split("/site-packages/")[0] + "/site-packages")
    if version is None and exe:
        m = _EXE.search(os.path.basename(exe))
        if m:
            version, free = (3, int(m.group(1))), m.group(2) == "t"

    def absolute(p: str) -> str:
        return os.path.normpath(os.path.join(cwd or "/", p))

    argv0 = absolute(argv[0]) if argv and "/" in argv[0] else None
    venv = _venv_of(
        [
            os.path.dirname(os.path.dirname(argv0)) if argv0 else None,
            (environ or {}).get("VIRTUAL_ENV"),
            *(os.path.dirname(os.path.dirname(os.path.dirname(d))) for d in mapped_dirs),
        ]
    )
    cfg = _pyvenv(venv) if venv else {}
    home = cfg.get("home")
    base_prefix = os.path.dirname(home) if home else None
    if base_prefix is None and exe:
        base_prefix = os.path.dirname(os.path.dirname(exe))

    script_dir = None
    if argv is not None and version is not None:
        script_dir = _script_dir(argv, absolute, cwd)
    pythonpath = tuple(
        absolute(p) for p in ((environ or {}).get("PYTHONPATH") or "").split(os.pathsep) if p
    )
    site_packages: list[str] = []
    if version is not None:
        lib = f"lib/python{version[0]}.{version[1]}{'t' if free else ''}"
        system_site = not venv or cfg.get("include-system-site-packages", "").lower() == "true"
        prefixes = [p for p in (venv, base_prefix if system_site else None) if p]
        site_packages += [os.path.join(prefix, lib, "site-packages") for prefix in prefixes]
        if base_prefix and system_site:
            # Debian's interpreters read dist-packages instead.
            site_packages += [
                os.path.join(base_prefix, "lib/python3/dist-packages"),
                os.path.join(base_prefix, "local", lib, "dist-packages"),
            ]
        site_packages += mapped_dirs
    seen: set[str] = set()
    existing = []
    for d in site_packages:
        real = os.path.realpath(d)
        if real not in seen and os.path.isdir(d):
            seen.add(real)
            existing.append(d)

    status = _read(f"{proc}/status", unreadable) or b""
    thp = None
    m_thp = re.search(rb"\nTHP_enabled:\s*(\d)", status)
    if m_thp:
        thp = m_thp.group(1) == b"0"
    return PythonProcess(
        pid=pid,
        exe=exe,
        argv=argv,
        cwd=cwd,
        environ=environ,
        version=version,
        free_threaded=free,
        venv=venv,
        base_prefix=base_prefix,
        script_dir=script_dir,
        pythonpath=pythonpath,
        site_packages=tuple(existing),
        extensions=extensions,
        thp_disabled=thp,
        flags=frozenset(_options(argv)[0]) if argv and version is not None else frozenset(),
        unreadable=tuple(unreadable),
    )


def _options(argv: tuple[str, ...]) -> tuple[set[str], str | None, int]:
    """The interpreter's one-letter flags, then ``"-m"``/``"-c"``/``None`` and the index of
    the argument after the options (the script, module or code)."""
    flags: set[str] = set()
    i = 1
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            return flags, None, i
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        for j, letter in enumerate(arg[1:], 1):
            if letter in "mc":
                return flags, f"-{letter}", i + 1
            if letter in "WX":  # the value is the rest of this argument or the next one
                i += 0 if j < len(arg) - 1 else 1
                break
            flags.add(letter)
        i += 1
    return flags, None, i


def _script_dir(
    argv: tuple[str, ...], absolute: Callable[[str], str], cwd: str | None
) -> str | None:
    """The directory Python puts first on ``sys.path``: the script's, or the cwd for -m/-c."""
    _, mode, i = _options(argv)
    if mode is not None:
        return cwd
    if i >= len(argv):
        return None
    path = absolute(argv[i])
    return os.path.dirname(path) if os.path.isfile(path) else None
