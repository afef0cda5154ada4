"""Which heap pages of this process were copied: ``/proc/self/pagemap`` bit 56.

Each virtual page has an 8-byte pagemap entry. Bit 63 says the page is present in RAM and bit
56 says it is mapped *exclusively* by this process. Right after ``fork()`` every inherited page
is shared with the parent (bit 56 clear); a copy-on-write fault gives the child its own copy and
sets the bit. Both bits are readable without privilege (PFNs are not, and are not needed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from forkmem.errors import InvalidArgument, UnsupportedPlatform

__all__ = ["PageSnapshot", "page_snapshot"]

_PRESENT = 1 << 63
_EXCLUSIVE = 1 << 56
_BOTH = _PRESENT | _EXCLUSIVE
_MAPS = "/proc/self/maps"
_PAGEMAP = "/proc/self/pagemap"


@dataclass(frozen=True, slots=True)
class PageSnapshot:
    """The state of this process's heap pages at one moment (see `page_snapshot()`).

    ``regions`` holds ``(start, end, entries)`` per anonymous writable mapping (``[heap]``
    included), ``entries`` being the raw pagemap words of its pages. ``pid`` is the process that
    took it: a snapshot only means something inside that process.
    """

    pid: int
    page_size: int
    regions: tuple[tuple[int, int, bytes], ...]

    @property
    def shared_pages(self) -> int:
        """Pages present in RAM and still shared with another process (the parent)."""
        return sum(1 for entry in self._entries() if entry & _BOTH == _PRESENT)

    def _entries(self) -> list[int]:
        out: list[int] = []
        for _start, _end, raw in self.regions:
            out.extend(memoryview(raw).cast("Q"))
        return out


def _heap_regions() -> list[tuple[int, int]]:
    """Anonymous read-write mappings: where Python objects and malloc'd buffers live."""
    regions: list[tuple[int, int]] = []
    with open(_MAPS, encoding="ascii", errors="replace") as maps:
        for line in maps:
            fields = line.split(None, 5)
            if len(fields) < 5 or not fields[1].startswith("rw"):
                continue
            name = fields[5].strip() if len(fields) > 5 else ""
            # Named mappings are files, stacks, vdso...; [heap] is brk memory (small objects
            # on some builds), nameless ones are mmap'd arenas and big buffers.
            if name and name != "[heap]":
                continue
            start, _, end = fields[0].partition("-")
            regions.append((int(start, 16), int(end, 16)))
    return regions


def _open_pagemap() -> int:
    try:
        return os.open(_PAGEMAP, os.O_RDONLY)
    except OSError as exc:
        raise UnsupportedPlatform(f"cannot read {_PAGEMAP}: {exc.strerror}") from None


def page_snapshot() -> PageSnapshot:
    """Read the pagemap entries of every heap page of this process.

    Take one right after ``fork()`` in the child and pass it to
    [`copied_objects()`][forkmem.testing.copied_objects] later as ``since=`` to see only the pages
    copied in between. Raises [`UnsupportedPlatform`][forkmem.UnsupportedPlatform] without
    ``/proc/self/pagemap``.
    """
    page_size = os.sysconf("SC_PAGE_SIZE")
    fd = _open_pagemap()
    try:
        regions = []
        for start, end in _heap_regions():
            length = (end - start) // page_size * 8
            raw = os.pread(fd, length, start // page_size * 8)
            # A short read means the mapping went away meanwhile: pad with "not present".
            regions.append((start, end, raw.ljust(length, b"\0")))
    finally:
        os.close(fd)
    return PageSnapshot(os.getpid(), page_size, tuple(regions))


def copied_pages(since: PageSnapshot | None) -> tuple[set[int], int]:
    """Page numbers copied (now exclusive) and the page size.

    With ``since``: pages that were present and shared then and are exclusive now, i.e. real
    copy-on-write copies. Without: every exclusive heap page (in a forked child, that is copied
    pages plus pages it newly wrote).
    """
    pages: set[int] = set()
    if since is None:
        now = page_snapshot()
        shift = now.page_size.bit_length() - 1
        for start, _end, raw in now.regions:
            first = start >> shift
            for i, entry in enumerate(memoryview(raw).cast("Q")):
                if entry & _BOTH == _BOTH:
                    pages.add(first + i)
        return pages, now.page_size
    if since.pid != os.getpid():
        raise InvalidArgument(
            f"this page snapshot was taken in process {since.pid}; "
            f"it means nothing in process {os.getpid()}"
        )
    shift = since.page_size.bit_length() - 1
    fd = _open_pagemap()
    try:
        for start, end, before_raw in since.regions:
            after_raw = os.pread(fd, len(before_raw), start >> shift << 3)
            after_raw = after_raw.ljust(len(before_raw), b"\0")
            before = memoryview(before_raw).cast("Q")
            after = memoryview(after_raw).cast("Q")
            first = start >> shift
            for i in range((end - start) >> shift):
                if before[i] & _BOTH == _PRESENT and after[i] & _BOTH == _BOTH:
                    pages.add(first + i)
    finally:
        os.close(fd)
    return pages, since.page_size
