"""Make the key tables that a class shares with its instances immortal (CPython 3.12+).

Every instance of a plain class keeps its attribute names in one key table owned by the class
(``ht_cached_keys``). That table has its own reference count: each instance whose ``__dict__``
is made (``vars(obj)``, ``obj.__dict__``, any attribute-copying library) adds one, and gives it
back when that dict dies. In a forked child, those two writes copy the table's page, and then
the page is written back to what it was: private memory for nothing. Immortalizing an object
does not cover the table, which is not an object. CPython treats a table whose count holds the
same value as its own static empty table (``Py_EMPTY_KEYS``) as immortal and never counts it;
this module writes that value.

Where the table pointer sits in a heap type, and which value the interpreter leaves alone, are
*probed* on a throwaway class, never derived from the version. Memory is read and written
through `forkmem._object_header.address_view`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from forkmem._object_header import address_view

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["KeysLayout", "immortalize_keys", "keys_layout"]

_DICT_USED = 16  # PyDictObject: refcount, type, ma_used, a version/watcher word, ma_keys, ...
_DICT_KEYS = 32
_DICT_VALUES = 40  # non-NULL for a split table (values apart, keys shared)
_MORTAL_LIMIT = 1 << 31  # any real count of a key table is far below this


class KeysLayout(NamedTuple):
    """Where a heap type keeps its shared key table, and the count CPython never changes."""

    offset: int
    immortal: int


_layout: KeysLayout | None = None
_probed = False


def _read(view: memoryview, address: int) -> int:
    word = address >> 2
    return int(view[word]) | int(view[word + 1]) << 32


def _write(view: memoryview, address: int, value: int) -> None:
    word = address >> 2
    view[word] = value & 0xFFFFFFFF
    view[word + 1] = value >> 32


def _probe(view: memoryview) -> KeysLayout | None:
    immortal = _read(view, _read(view, id({}) + _DICT_KEYS))  # Py_EMPTY_KEYS' count
    if immortal < _MORTAL_LIMIT:
        return None

    class Probe:
        def __init__(self) -> None:
            self.attribute = 0

    first = vars(Probe())
    if _read(view, id(first) + _DICT_USED) != 1 or not _read(view, id(first) + _DICT_VALUES):
        return None  # not a split table: no shared keys to find
    keys = _read(view, id(first) + _DICT_KEYS)
    if not 1 <= _read(view, keys) < _MORTAL_LIMIT:
        return None
    size: int = type.__dict__["__basicsize__"].__get__(type)  # sizeof(PyHeapTypeObject)
    offsets = [at for at in range(0, size, 8) if _read(view, id(Probe) + at) == keys]
    if len(offsets) != 1:
        return None
    # Does the interpreter leave that count alone? The probe class's table stays immortal
    # whatever the answer (a count that high never reaches zero either).
    _write(view, keys, immortal)
    second = vars(Probe())
    kept = _read(view, keys) == immortal
    del second
    if not kept or _read(view, keys) != immortal:
        return None
    return KeysLayout(offsets[0], immortal)


def keys_layout() -> KeysLayout | None:
    """The probed layout, or None where shared key tables cannot be found or made immortal
    (before 3.12, another implementation or object layout)."""
    global _layout, _probed
    if not _probed:
        _probed = True
        view = address_view()
        _layout = None if view is None else _probe(view)
    return _layout


def immortalize_keys(classes: Iterable[type]) -> int:
    """Make the shared key table of each heap type in ``classes`` immortal; return how many
    tables were changed. The caller has checked the runtime (``check_runtime()``)."""
    found = keys_layout()
    view = address_view()
    if found is None or view is None:
        return 0
    changed = 0
    for cls in classes:
        keys = _read(view, id(cls) + found.offset)
        if keys and 1 <= _read(view, keys) < _MORTAL_LIMIT:
            _write(view, keys, found.immortal)
            changed += 1
    return changed
