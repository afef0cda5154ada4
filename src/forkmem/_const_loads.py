"""Give constant loads the immortal form once their constants are immortal (CPython 3.14, private).

CPython 3.14 specializes ``LOAD_CONST`` on its first run into ``LOAD_CONST_IMMORTAL`` or
``LOAD_CONST_MORTAL``, by whether the constant is immortal at that moment. The mortal form
increments the constant's reference count without checking for immortality, and the reference is
dropped the same unchecked way. Code that ran before `immortalize()` made its constants immortal
(a rehearsal's request path, the start-up code) keeps the mortal form, so every run of it in a
forked worker writes the count of each tuple, str, large int, frozenset, slice or nested code
object it loads: the constant's page is copied, although the count ends where it started.

`retag()` rewrites those instructions to the immortal form where the constant is immortal now,
which is what the specializer itself would have chosen: the same instruction with no inline cache
and the same stack effect, differing only in not counting. It is a one-byte store of the opcode,
as the specializer's own. Code whose instructions it cannot account for (instrumented by a
``sys.monitoring`` tool, an optimizer's executor, a layout it does not know) is left alone.
CPython 3.15 checks immortality in both places and has no such pair: there this does nothing.
"""

from __future__ import annotations

import ctypes
import dis
import opcode
import sys
import types
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["available", "retag"]


class _Table(NamedTuple):
    mortal: int
    immortal: int
    extended_arg: int
    caches: bytes  # inline cache entries per opcode
    known: frozenset[int]  # opcodes whose cache count is known (not instrumented, no executor)


def _table() -> _Table | None:
    specialized: dict[str, int] | None = getattr(dis, "_specialized_opmap", None)
    specializations: dict[str, list[str]] | None = getattr(opcode, "_specializations", None)
    entries: Any = getattr(opcode, "_inline_cache_entries", None)
    if not specialized or not specializations or entries is None:
        return None
    if not hasattr(sys, "_is_immortal") or not hasattr(types.CodeType, "_co_code_adaptive"):
        return None
    mortal = specialized.get("LOAD_CONST_MORTAL")
    immortal = specialized.get("LOAD_CONST_IMMORTAL")
    if mortal is None or immortal is None or entries.get("LOAD_CONST", 0):
        return None
    caches = bytearray(256)
    known: set[int] = set()
    for name, op in opcode.opmap.items():
        if op < 256 and not name.startswith("INSTRUMENTED_") and name != "ENTER_EXECUTOR":
            caches[op] = entries.get(name, 0)
            known.add(op)
    for base, names in specializations.items():
        for name in names:
            special = specialized.get(name)
            if special is not None and special < 256:
                caches[special] = entries.get(base, 0)
                known.add(special)
    return _Table(mortal, immortal, opcode.opmap["EXTENDED_ARG"], bytes(caches), frozenset(known))


_TABLE = _table()
_BYTECODE = types.CodeType.__basicsize__  # the adaptive bytecode is the object's variable part


def available() -> bool:
    """Whether this interpreter has the mortal/immortal constant load pair."""
    return _TABLE is not None


def _mortal_loads(code: types.CodeType, table: _Table) -> list[int] | None:
    """Offsets of LOAD_CONST_MORTAL instructions whose constant is immortal; None when an
    instruction is not one this module can step over."""
    adaptive: bytes = code._co_code_adaptive  # type: ignore[attr-defined]
    consts = code.co_consts
    is_immortal = sys._is_immortal  # type: ignore[attr-defined]
    mortal, extended, caches, known = table.mortal, table.extended_arg, table.caches, table.known
    found: list[int] = []
    i, end, arg = 0, len(adaptive), 0
    while i < end:
        op = adaptive[i]
        if op not in known:
            return None
        arg |= adaptive[i + 1]
        if op == extended:
            arg <<= 8
            i += 2
            continue
        if op == mortal and arg < len(consts) and is_immortal(consts[arg]):
            found.append(i)
        arg = 0
        i += 2 * (1 + caches[op])
    return found


def retag(codes: Iterable[types.CodeType]) -> int:
    """Rewrite ``LOAD_CONST_MORTAL`` to ``LOAD_CONST_IMMORTAL`` in ``codes`` where the constant
    is immortal; return how many instructions were rewritten (0 where the pair does not exist)."""
    table = _TABLE
    if table is None:
        return 0
    marker = bytes((table.mortal,))
    rewritten = 0
    for code in codes:
        adaptive: bytes = code._co_code_adaptive  # type: ignore[attr-defined]
        if marker not in adaptive:
            continue
        start = id(code) + _BYTECODE
        # The object's memory must hold exactly this bytecode where it is expected.
        if ctypes.string_at(start, len(adaptive)) != adaptive:
            continue
        offsets = _mortal_loads(code, table)
        for offset in offsets or ():
            byte = ctypes.c_uint8.from_address(start + offset)
            if byte.value == table.mortal:
                byte.value = table.immortal
                rewritten += 1
    return rewritten
