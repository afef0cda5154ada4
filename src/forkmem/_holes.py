"""Fill the allocators' free holes in the parent, so forked children allocate in new pages
(private).

A long-lived parent leaves free blocks in pymalloc's pools and free chunks in glibc's bins, on
pages that also hold live objects every child shares. A child allocating into such a hole writes
that page, and the allocator's bookkeeping writes more (the pool header, the neighbours of a
chunk unlinked from a doubly-linked bin, on other pages): each is a private copy. Allocated once
in the parent and never freed, the holes are gone; a child's allocations come from fresh pools
and the top of the heap, pages it would have needed anyway.

Names only the type attribute cache holds are freed first (the cache is emptied), since a child
replacing those cache entries would free them in shared pools and then allocate there.

The holes stay allocated for the life of the process: that is the point. Their memory was
already part of the parent's heap; pages of a large free chunk that ``malloc_trim`` gave back are
not touched again (malloc writes only chunk headers, never the body).
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

from forkmem._malloc import glibc
from forkmem._object_header import address_view

__all__ = [
    "HoleReport",
    "claim_pool",
    "claim_top",
    "fill_holes",
    "pool_block",
    "pymalloc_layout",
]

# pymalloc on 64-bit builds since 3.10 (radix tree on): 16 KiB pools, 16-byte size classes up to
# 512 bytes, a 48-byte pool header, so a fresh pool's first block sits at offset 48.
_POOL = 16384
_HEADER = 48
_ALIGN = 16
_SMALL = 512
_SZIDX = 36  # the pool header's size class index (uint): block size // 16 - 1
_NEXTOFFSET = 40  # ... and where its next never-used block starts
_TEMPORARIES = 4  # the fill loop's own live 32-byte ints (see claim_pool)
_HALF = "0.5"  # parsed each time, so every filler float is a new object
_BYTES_HEADER = sys.getsizeof(b"")  # 33 on 64-bit CPython: bytes(n) takes n + 33 bytes
# glibc request sizes to fill with, largest first, so a big free chunk is eaten in big bites.
_CHUNK_SIZES = (*(1 << b for b in range(16, 10, -1)), *range(1024, 15, -16))

_kept: list[object] = []  # the pymalloc fillers; glibc fillers are never freed and need no list
_libc: Any = None
_layout: bool | None = None


@dataclass(frozen=True, slots=True)
class HoleReport:
    """What `fill_holes()` allocated: pymalloc blocks and glibc chunks, with their bytes, and
    ``skipped``: allocator -> why it was not filled."""

    blocks: int = 0
    block_bytes: int = 0
    chunks: int = 0
    chunk_bytes: int = 0
    skipped: dict[str, str] = field(default_factory=dict)


def pool_block(size: int) -> int:
    """pymalloc's block size for an object of ``size`` bytes (0 when malloc serves it)."""
    return 0 if size > _SMALL else -(-size // _ALIGN) * _ALIGN


def _filler(block: int) -> object:
    """A new object that takes exactly one ``block``-byte pymalloc block: ``object()`` for 16
    bytes, a float (24 bytes) for 32, a ``bytes`` from 48 on (its header is 33 bytes)."""
    if block == _ALIGN:
        return object()
    if block == 2 * _ALIGN:
        return float(_HALF)  # a new float every time (not the constant itself)
    return bytes(block - _BYTES_HEADER)  # a new object for every length above 1


def pymalloc_layout() -> bool:
    """Whether objects come from pymalloc pools laid out as above (not PYTHONMALLOC=malloc,
    debug hooks or another build): every 96-byte block must sit at 48 + k*96 in its pool, and
    its pool's header must name the 96-byte size class and count at least those blocks."""
    global _layout
    if _layout is None:
        probes = [_filler(96) for _ in range(64)]
        _layout = all((id(p) % _POOL - _HEADER) % 96 == 0 for p in probes) and all(
            _header(id(p), 96) >= 1 for p in probes
        )
    return _layout


def _header(address: int, block: int) -> int:
    """The live-block count in the header of the pool holding ``address`` (a live object of
    ``block`` bytes), or -1 when the header does not name that size class.

    Read through one view of the address space: no object is made per read, so the read itself
    takes no block from the pool it looks at.
    """
    view = address_view()
    if view is None:
        return -1
    word = (address & ~(_POOL - 1)) >> 2
    if view[word + _SZIDX // 4] != block // _ALIGN - 1:
        return -1
    return int(view[word])


def _frontier(address: int, block: int, within: int) -> bool:
    """Whether the block at ``address`` is among the last ``within`` its pool carved from
    never-used memory (not one from its free list): a fresh pool hands out blocks that way."""
    view = address_view()
    assert view is not None  # _header() read the same pool through it
    carved = int(view[((address & ~(_POOL - 1)) + _NEXTOFFSET) >> 2])
    return carved - within * block <= address % _POOL < carved


def claim_pool(block: int, cap: int) -> tuple[int, int]:
    """Fill every free ``block``-byte block in this size class's partly used pools, so its next
    allocation starts a fresh pool. Returns (blocks, bytes) allocated, at most ``cap`` bytes.

    pymalloc takes a fresh (or emptied) pool only once every used pool of the class is full, so
    the fill stops at the first filler whose pool holds nothing but fillers: the pool header's
    live-block count says so. Those fillers are freed again, and their pool goes back.
    """
    # This loop's own ints (an address, a count) are 32-byte blocks: while that class fills,
    # a few of them may sit in the fresh pool beside the fillers, so there a pool of fillers
    # and at most that many others, handing out never-used blocks, is the fresh one.
    slack = _TEMPORARIES if block == 2 * _ALIGN else 0
    kept = _kept
    pool = here = count = 0
    while count * block < cap:
        filler = _filler(block)
        kept.append(filler)
        count += 1
        address = id(filler)
        if address & ~(_POOL - 1) == pool:
            here += 1
        else:
            pool, here = address & ~(_POOL - 1), 1
        live = _header(address, block)
        if live < 0:  # not the layout the probe saw: stop, keep what is filled
            break
        if live == here or (live - here <= slack and _frontier(address, block, slack + 1)):
            del kept[len(kept) - here :]
            count -= here
            break
    return count, count * block


def _malloc() -> Any:
    """glibc with malloc/free/sbrk/mallinfo2 typed, or None (another libc, glibc < 2.33)."""
    global _libc
    if _libc is None:
        libc = glibc()
        if libc is None or not hasattr(libc, "mallinfo2"):
            _libc = False
            return None

        class Mallinfo2(ctypes.Structure):
            _fields_ = [
                (name, ctypes.c_size_t)
                for name in (
                    "arena", "ordblks", "smblks", "hblks", "hblkhd",
                    "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
                )
            ]  # fmt: skip

        libc.mallinfo2.restype = Mallinfo2
        libc.mallinfo2.argtypes = []
        libc.sbrk.restype = ctypes.c_void_p
        libc.sbrk.argtypes = [ctypes.c_ssize_t]
        libc.malloc.restype = ctypes.c_void_p
        libc.malloc.argtypes = [ctypes.c_size_t]
        libc.free.restype = None
        libc.free.argtypes = [ctypes.c_void_p]
        _libc = libc
    return _libc or None


def _top(libc: Any) -> int:
    """Where the main arena's top chunk starts: the program break minus its size."""
    return int(libc.sbrk(0)) - int(libc.mallinfo2().keepcost)


def claim_top(size: int, cap: int) -> tuple[int, int]:
    """Allocate glibc's free chunks that could serve a ``size``-byte request, until one comes
    from the top of the heap (freed again at once). Returns (chunks, bytes), at most ``cap``.

    Main arena only: called from another thread, whose allocations go elsewhere, it does nothing.
    """
    libc = _malloc()
    if libc is None or threading.current_thread() is not threading.main_thread():
        return 0, 0
    count = 0
    while count * size < cap:
        top = _top(libc)
        pointer = libc.malloc(size)
        if pointer is None:
            break
        if pointer >= top:  # from the top (or its own mapping): no hole left for this size
            libc.free(pointer)
            break
        count += 1  # never freed: the hole stays filled
    return count, count * size


def _drop_cached_names() -> None:
    """Empty the interpreter's type attribute cache, which owns a reference to every name it
    caches. Names built at run time (``getattr(obj, "visit_" + kind)``, f-strings) live only
    there; a child replacing the entry would free them in a shared pool, and the pool, back at
    the head of its size class, would take the child's next allocations on that shared page.
    Freed now, their blocks are filled like any other hole. A cache: children refill it."""
    clear = getattr(sys, "_clear_internal_caches", None) or getattr(sys, "_clear_type_cache", None)
    if clear is not None:
        clear()


def fill_holes(cap: int = 64 << 20) -> HoleReport:
    """Fill pymalloc's and glibc's holes in this process, at most ``cap`` bytes each, after
    emptying the type attribute cache (see `_drop_cached_names`). The collector is off
    meanwhile: a collection freeing garbage would reopen holes already filled."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _drop_cached_names()
        return _fill(cap)
    finally:
        if was_enabled:
            gc.enable()


def _fill(cap: int) -> HoleReport:
    skipped: dict[str, str] = {}
    blocks = block_bytes = chunks = chunk_bytes = 0
    if pymalloc_layout():
        # Largest first, 32 bytes last: the loop's own ints are 32-byte blocks, so they only
        # churn a class that is filled after every other one.
        for block in (*range(_SMALL, 2 * _ALIGN, -_ALIGN), _ALIGN, 2 * _ALIGN):
            count, size = claim_pool(block, cap - block_bytes)
            blocks, block_bytes = blocks + count, block_bytes + size
    else:
        skipped["pymalloc"] = "objects do not come from pymalloc pools here"
    if _malloc() is None:
        skipped["malloc"] = "needs glibc 2.33+ (mallinfo2)"
    elif threading.current_thread() is not threading.main_thread():
        skipped["malloc"] = "not the main thread (its own malloc arena)"
    else:
        for size in _CHUNK_SIZES:
            count, nbytes = claim_top(size, cap - chunk_bytes)
            chunks, chunk_bytes = chunks + count, chunk_bytes + nbytes
    return HoleReport(blocks, block_bytes, chunks, chunk_bytes, skipped)
