"""Private helpers for the bytecode check: pyc headers, cache locations, and walking.

Nothing here imports or executes the code it looks at. A file is judged the way CPython's
``SourceLoader.get_code`` would judge it, from the 16-byte pyc header and the source's stat:

    bytes 0-3   magic number (``importlib.util.MAGIC_NUMBER`` of the Python that wrote it)
    bytes 4-7   flags: bit 0 = hash-based (PEP 552), bit 1 = check the source hash
    bytes 8-15  timestamp pyc: source mtime (uint32) + source size (uint32)
                hash-based pyc: ``importlib.util.source_hash`` of the source (8 bytes)
"""

from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import os
import stat
import struct
import sys

from forkmem._pycbuild import file_kind, read_source

TYPE_CHECKING = False  # typing stays off the check's path (see forkmem._bytecode_scan)
if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from typing import Any

__all__: list[str] = []

MAGIC = importlib.util.MAGIC_NUMBER
SOURCE_SUFFIXES = tuple(importlib.machinery.SOURCE_SUFFIXES)
BYTECODE_SUFFIX = importlib.machinery.BYTECODE_SUFFIXES[0]
EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)
ZIP_SUFFIXES = (".zip", ".egg", ".whl", ".pyz")
_FLAG_HASH = 0b01
_FLAG_CHECK_SOURCE = 0b10
_HEADER = struct.Struct("<4sIII")
TIMESTAMP = struct.Struct("<II")
# A pyc header is read without following a symlink at the name and without blocking (a FIFO
# named like a pyc opens at once and reads as empty: a truncated, stale pyc).
O_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)

# Magic numbers are assigned in blocks per minor version (Lib/importlib/_bootstrap_external.py);
# only used to say which Python wrote a foreign pyc.
_MAGIC_RANGES = (
    (3400, 3419, "3.8"),
    (3420, 3429, "3.9"),
    (3430, 3449, "3.10"),
    (3450, 3499, "3.11"),
    (3500, 3549, "3.12"),
    (3550, 3599, "3.13"),
    (3600, 3649, "3.14"),
    (3650, 3699, "3.15"),
)


def magic_label(magic: bytes) -> str:
    """Describe a magic number for humans: ``"magic 3495 (Python 3.11)"``."""
    if len(magic) < 4 or magic[2:4] != b"\r\n":
        return f"not a pyc (first bytes {magic[:4]!r})"
    number = int.from_bytes(magic[:2], "little")
    for low, high, version in _MAGIC_RANGES:
        if low <= number <= high:
            return f"magic {number} (Python {version})"
    return f"magic {number}"


def check_source_mode() -> str:
    """``--check-hash-based-pycs`` of this interpreter: ``default``, ``always`` or ``never``."""
    import _imp

    return str(getattr(_imp, "check_hash_based_pycs", "default"))


def opt_tag(optimization: int) -> str:
    return f".opt-{optimization}" if optimization else ""


class CacheDirs:
    """Per-directory memo of cache locations and whether this user can write them."""

    __slots__ = ("_dirs", "_writable")

    def __init__(self) -> None:
        self._dirs: dict[str, str] = {}
        self._writable: dict[str, bool] = {}

    def cache_dir(self, source_dir: str) -> str:
        """Directory holding the pycs of sources in ``source_dir`` (honours sys.pycache_prefix)."""
        found = self._dirs.get(source_dir)
        if found is None and sys.pycache_prefix is None and os.path.isabs(source_dir):
            found = self._dirs[source_dir] = source_dir.rstrip(os.sep) + os.sep + "__pycache__"
        elif found is None:
            # Ask importlib once per directory so every rule it applies (prefix, relative
            # paths) is applied here too; the caller appends the file name (same rule as importlib).
            found = os.path.dirname(
                importlib.util.cache_from_source(os.path.join(source_dir, "x.py"))
            )
            self._dirs[source_dir] = found
        return found

    def writable(self, cache_dir: str) -> bool:
        """Could the importer create a pyc in ``cache_dir`` as this process's effective user?"""
        known = self._writable.get(cache_dir)
        if known is None:
            known = _dir_writable(cache_dir)
            self._writable[cache_dir] = known
        return known


def _access_w(path: str) -> bool:
    # faccessat(AT_EACCESS) asks the kernel with the *effective* ids and capabilities, and sees
    # ACLs, read-only mounts and immutable flags; a plain access() would use the real uid.
    mode = os.W_OK | os.X_OK
    if os.access in os.supports_effective_ids:
        return os.access(path, mode, effective_ids=True)
    return os.access(path, mode)


def _dir_writable(cache_dir: str) -> bool:
    path = cache_dir
    while True:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            parent = os.path.dirname(path)
            if parent == path:
                return False
            path = parent  # the importer creates missing parents one by one
            continue
        except OSError:
            return False
        if not stat.S_ISDIR(st.st_mode):
            return False
        return _access_w(path)


def validate(
    header: bytes, source: str, mtime: float, size: int, check_mode: str
) -> tuple[bool, str, str | None]:
    """Judge a pyc header against its source: (valid, reason, invalidation mode)."""
    if len(header) < 16:
        return False, f"truncated pyc ({len(header)} bytes)", None
    # magic, flags, then mtime + size (timestamp pyc) or the 8-byte source hash

    magic, flags, word2, word3 = _HEADER.unpack(header)
    if magic != MAGIC:
        return False, f"written by another Python: {magic_label(magic)}", None
    if flags & ~(_FLAG_HASH | _FLAG_CHECK_SOURCE):
        return False, f"invalid pyc flags {flags:#x}", None
    if flags & _FLAG_HASH:
        checked = bool(flags & _FLAG_CHECK_SOURCE)
        mode = "checked-hash" if checked else "unchecked-hash"
        if check_mode == "never" or (check_mode != "always" and not checked):
            return True, f"{mode} pyc, not compared with the source by this interpreter", mode
        try:
            data = read_source(source)[0]
        except OSError as exc:
            return False, f"cannot read the source to check its hash: {exc.strerror}", mode
        if importlib.util.source_hash(data) != header[8:16]:
            return False, f"{mode} pyc: source hash differs (source edited)", mode
        return True, f"{mode} pyc matches the source hash", mode
    if word2 != int(mtime) & 0xFFFFFFFF:
        return False, "source mtime differs from the pyc's (source edited)", "timestamp"
    if word3 != size & 0xFFFFFFFF:
        return False, "source size differs from the pyc's (source edited)", "timestamp"
    return True, "timestamp pyc matches", "timestamp"


class Found:
    """One raw result of a walk, before the public dataclass is built.

    A plain class: the check must not need the dataclass machinery (see _bytecode_scan).
    """

    __slots__ = ("kind", "module", "path", "reason", "size")

    def __init__(
        self,
        kind: str,  # "sourceless", "skipped", "problem"
        path: str,
        size: int = 0,
        *,
        module: str | None = None,
        reason: str = "",
    ) -> None:
        self.kind = kind
        self.path = path
        self.size = size
        self.module = module
        self.reason = reason


def _is_source(name: str) -> bool:
    return name.endswith(SOURCE_SUFFIXES)


def _entry_problem(path: str) -> str | None:
    """Why a symlink that is neither file nor directory is broken, or None."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symlink loop"
        if exc.errno == errno.ENOENT:
            return "dangling symlink"
        return f"cannot stat: {exc.strerror}"
    return None


Source = tuple[str, int, float, "str | None"]
"""(source path, size, mtime, module name or None)."""
Group = tuple[str, list[Source], list["Found"]]
"""(directory, sources, other findings) for one directory."""


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
_SCANDIR_FD = os.scandir in os.supports_fd


def _listing(directory: str) -> tuple[int | None, list[os.DirEntry[str]]]:
    """A directory's entries, and the open fd they are relative to (None where unsupported)."""
    if not _SCANDIR_FD:
        with os.scandir(directory) as it:
            return None, list(it)
    fd = os.open(directory, _DIR_FLAGS)
    try:
        with os.scandir(fd) as it:
            return fd, list(it)
    except BaseException:
        os.close(fd)
        raise


def walk_tree(root: str, linked: set[str] | None = None) -> Iterator[Group]:
    """Yield (directory, sources, other findings) for every directory under ``root``.

    Follows symlinked directories like the importer would, remembers each directory's
    (device, inode) so a link back to an ancestor is reported once as a loop and an alias of
    a directory already seen is not checked twice. Never raises for unreadable entries.
    Directories entered through a symlink are added to ``linked``.
    """
    try:
        st = os.stat(root)
    except OSError as exc:
        yield root, [], [Found("problem", root, reason=f"cannot stat: {exc.strerror}")]
        return
    is_source = SOURCE_SUFFIXES[0] if len(SOURCE_SUFFIXES) == 1 else SOURCE_SUFFIXES
    sep = os.sep
    seen: set[tuple[int, int]] = {(st.st_dev, st.st_ino)}
    # Stack of (directory, ancestors' identities); ancestors tell a loop from an alias.
    stack: list[tuple[str, int, frozenset[tuple[int, int]]]] = [
        (root, st.st_dev, frozenset({(st.st_dev, st.st_ino)}))
    ]
    # Symlinked directories wait until every real directory is walked, so a directory is
    # reached by its real path first and a link back up is seen as the loop it is.
    deferred: list[tuple[str, tuple[int, int], frozenset[tuple[int, int]]]] = []
    while stack or deferred:
        if not stack:
            path, ident, ancestors = deferred.pop()
            if ident not in seen:
                seen.add(ident)
                if linked is not None:
                    linked.add(path)
                stack.append((path, ident[0], ancestors | {ident}))
            continue
        directory, dev, ancestors = stack.pop()
        found: list[Found] = []
        sources: list[Source] = []
        pycs: list[os.DirEntry[str]] = []
        try:
            dfd, entries = _listing(directory)
        except OSError as exc:
            reason = "unreadable directory" if exc.errno == errno.EACCES else exc.strerror
            why = f"{reason} ({exc.strerror})"
            yield directory, [], [Found("problem", directory, reason=why)]
            continue
        # Entries listed from a directory fd are stat'ed relative to it (fstatat): the kernel
        # resolves one name per file instead of the whole path.
        prefix = directory.rstrip(sep) + sep
        try:
            for entry in entries:
                name = entry.name
                try:
                    if name.endswith(is_source) and entry.is_file():
                        est = entry.stat()
                        sources.append((prefix + name, est.st_size, est.st_mtime, None))
                        continue
                    if name.endswith(BYTECODE_SUFFIX) and entry.is_file():
                        pycs.append(entry)
                        continue
                    if entry.is_dir():
                        if name == "__pycache__":
                            continue
                        if entry.is_symlink():
                            dst = entry.stat()
                            ident = (dst.st_dev, dst.st_ino)
                        else:
                            # d_ino from the directory listing: no stat. A mount point inside
                            # the tree reports the covered inode, which is still unique here.
                            ident = (dev, entry.inode())
                        if ident in ancestors:
                            found.append(
                                Found(
                                    "problem",
                                    prefix + name,
                                    reason="symlink loop (links to an ancestor)",
                                )
                            )
                        elif entry.is_symlink():
                            deferred.append((prefix + name, ident, ancestors))
                        elif ident not in seen:
                            seen.add(ident)
                            stack.append((prefix + name, dev, ancestors | {ident}))
                        continue
                    if entry.is_symlink():
                        broken = _entry_problem(prefix + name)
                        if broken == "symlink loop" or (broken and _is_source(name)):
                            found.append(Found("problem", prefix + name, reason=broken))
                            continue
                    if name.endswith(is_source):
                        # A FIFO, device or socket named like a source: never opened.
                        kind = file_kind(entry.stat().st_mode)
                        found.append(Found("problem", prefix + name, reason=f"{kind}: skipped"))
                except OSError as exc:
                    why = (
                        "symlink loop"
                        if exc.errno == errno.ELOOP
                        else f"cannot stat: {exc.strerror}"
                    )
                    found.append(Found("problem", prefix + name, reason=why))
            if pycs:
                stems = {src[0].rpartition(sep)[2].rpartition(".")[0] for src in sources}
            for entry in pycs:
                # A pyc beside the sources (not in __pycache__) is imported only without a source.
                stem = entry.name[: -len(BYTECODE_SUFFIX)]
                if stem not in stems:
                    try:
                        size = entry.stat().st_size
                    except OSError:
                        size = 0
                    found.append(Found("sourceless", prefix + entry.name, size))
        finally:
            if dfd is not None:
                os.close(dfd)
        yield directory, sources, found


def iter_paths(paths: Iterable[str], linked: set[str] | None = None) -> Iterator[Group]:
    """Like walk_tree over several roots; files given directly are judged on their own."""
    for path in paths:
        if os.path.isdir(path):
            yield from walk_tree(path, linked)
            continue
        directory = os.path.dirname(path) or "."
        name = os.path.basename(path)
        try:
            st = os.stat(path)
        except OSError as exc:
            yield directory, [], [Found("problem", path, reason=f"cannot stat: {exc.strerror}")]
            continue
        if name.endswith(ZIP_SUFFIXES):
            reason = "zip archive: the importer never writes bytecode for zipped modules"
            yield directory, [], [Found("skipped", path, reason=reason)]
        elif _is_source(name) and not stat.S_ISREG(st.st_mode):
            reason = f"{file_kind(st.st_mode)}: skipped"
            yield directory, [], [Found("problem", path, reason=reason)]
        elif _is_source(name):
            yield directory, [(path, st.st_size, st.st_mtime, None)], []
        elif name.endswith(BYTECODE_SUFFIX):
            base = path[: -len(BYTECODE_SUFFIX)]
            if any(os.path.exists(base + s) for s in SOURCE_SUFFIXES):
                continue  # a legacy pyc shadowed by its source: the importer ignores it
            yield directory, [], [Found("sourceless", path, st.st_size)]
        else:
            yield directory, [], [Found("skipped", path, reason="not a Python source or pyc file")]


def namespace(module: object) -> dict[str, object]:
    """A module's own attributes, read without running any of its code.

    Plain attribute access can run code: a module loaded through ``importlib.util.LazyLoader``
    executes itself on its first attribute access, a module ``__getattr__`` may import, and
    ``sys.modules`` may hold any object. ``object.__getattribute__`` reads the ``__dict__``
    slot past all of them.
    """
    try:
        ns = object.__getattribute__(module, "__dict__")
    except (AttributeError, TypeError):
        return {}
    return ns if isinstance(ns, dict) else {}


def iter_modules(modules: Iterable[tuple[str, object]]) -> Iterator[Group]:
    """Findings for loaded modules, from ``__spec__.origin``/``__file__`` only (never imports).

    Hot path (every loaded module of a big process): plain string operations, one stat each.
    """
    import zipimport

    zip_loader = zipimport.zipimporter
    seen: set[str] = set()
    by_dir: dict[str, tuple[list[Source], list[Found]]] = {}
    skipped: list[Found] = []
    sep = os.sep
    one_suffix = SOURCE_SUFFIXES[0] if len(SOURCE_SUFFIXES) == 1 else None
    for name, module in modules:
        ns = namespace(module)
        spec: Any = ns.get("__spec__")
        origin: Any
        if spec is None:
            origin = ns.get("__file__")
            if name == "__main__":
                why = "__main__ run as a script: always compiled, never cached"
                skipped.append(Found("skipped", origin or "", module=name, reason=why))
                continue
            if not isinstance(origin, str):
                why = "no __spec__ and no __file__"
                skipped.append(Found("skipped", "", module=name, reason=why))
                continue
        else:
            origin = spec.origin
            if origin is None or not spec.has_location:
                if origin in ("built-in", "frozen"):
                    why = f"{origin} module: nothing to cache"
                elif origin is None and spec.submodule_search_locations is not None:
                    why = "namespace package: no source file"
                elif origin is None:
                    why = "no origin file"
                else:
                    why = f"origin {origin!r} is not a file"
                skipped.append(Found("skipped", origin or "", module=name, reason=why))
                continue
            if spec.loader.__class__ is zip_loader:
                why = "zip import: the importer never writes bytecode for zipped modules"
                skipped.append(Found("skipped", origin, module=name, reason=why))
                continue
            if not isinstance(origin, str):
                continue
        if origin in seen:
            continue  # aliases such as os.path -> posixpath
        seen.add(origin)
        directory = origin.rpartition(sep)[0]
        group = by_dir.get(directory)
        if group is None:
            group = by_dir[directory] = ([], [])
        if origin.endswith(one_suffix) if one_suffix else _is_source(origin):
            try:
                st = os.stat(origin)
            except OSError as exc:
                f = Found("problem", origin, module=name, reason=f"cannot stat: {exc.strerror}")
            else:
                group[0].append((origin, st.st_size, st.st_mtime, name))
                continue
        elif origin.endswith(BYTECODE_SUFFIX):
            try:
                size = os.stat(origin).st_size
            except OSError:
                size = 0
            f = Found("sourceless", origin, size, module=name)
        elif origin.endswith(EXTENSION_SUFFIXES):
            f = Found("skipped", origin, module=name, reason="extension module: machine code")
        else:
            f = Found("skipped", origin, module=name, reason="not a Python source file")
        group[1].append(f)
    yield "", [], skipped
    for directory, (sources, found) in by_dir.items():
        yield directory, sources, found
