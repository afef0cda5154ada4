"""Move the code objects a rehearsal ran next to each other, before the fork (private).

On CPython 3.11+ running a function writes into its code object: the specializing interpreter's
adaptive counters and inline caches live in the bytecode (3.12-3.14 rewrite a counter on every
run of an instruction that failed to specialize). On 3.10/3.11 every call also writes the code
object's reference count. A forked worker therefore copies each page that holds a code object it
runs. Imports leave those code objects one or two per page among cold ones, so a request path of a
few thousand functions costs a few thousand pages per worker.

After a rehearsal has run the hot path once, `CodeRecorder` records which code objects started
in a second run; `pack()` then makes a copy of each (``code.replace()``: same bytecode, constants,
names and line table), allocated together in fresh allocator pools, and points every function
object at its copy. The rehearsal's later rounds specialize the copies in the parent, so a worker
writes to a few dense pages instead of thousands of sparse ones.

Only code identity changes: the copies compare and hash equal to the originals; functions,
their names, ``__wrapped__`` chains and pickling by reference are untouched. Frames already
running (the caller's stack, suspended generators) keep their original code. Code another
``sys.monitoring`` tool has local events on is left alone. The originals are kept alive: freed,
their blocks would be holes the workers allocate into.
"""

from __future__ import annotations

import gc
import sys
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forkmem import _holes

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = ["CodeRecorder", "PackReport", "pack"]

# sys.monitoring ids 0-2 and 5 are the debugger's, coverage's, the profiler's and the optimizer's
# by convention (PEP 669); 3 and 4 are free.
_TOOL_IDS = (4, 3)
_TOOL_NAME = "forkmem.code_pack"

_CAP = 16 << 20  # bytes of holes one size may fill: a bound, far above what a real heap has

# The originals of every packed code object, kept alive for the process's life (see above).
_originals: list[types.CodeType] = []
# The copies pack() made (ids; each is kept alive by its original's functions or here): packed
# once, dense and specialized, they are not copied again by a later pack() (a refork mold's,
# after the master's rehearsal packed).
_copies: list[types.CodeType] = []
_copy_ids: set[int] = set()


class CodeRecorder:
    """Context manager recording the code objects whose frames start inside the block.

    ``sys.monitoring`` PY_START events (3.12+), each location disabled after its first event so
    the block runs at nearly full speed; ``sys.setprofile`` before 3.12, and only when no
    profiler is set. ``codes`` is empty when no recording was possible (``reason`` says why).
    """

    def __init__(self) -> None:
        self.codes: dict[int, types.CodeType] = {}
        self.reason: str | None = None
        self._tool: int | None = None
        self._profiling = False

    def __enter__(self) -> CodeRecorder:
        monitoring: Any = getattr(sys, "monitoring", None)
        if monitoring is not None:
            for tool in _TOOL_IDS:
                if monitoring.get_tool(tool) is None:
                    monitoring.use_tool_id(tool, _TOOL_NAME)
                    self._tool = tool
                    break
            else:
                self.reason = "no free sys.monitoring tool id"
                return self
            disable = monitoring.DISABLE
            codes = self.codes

            def started(code: types.CodeType, offset: int) -> object:
                codes[id(code)] = code
                return disable

            event = monitoring.events.PY_START
            monitoring.register_callback(self._tool, event, started)
            monitoring.set_events(self._tool, event)
        elif sys.getprofile() is None:
            codes = self.codes

            def profile(frame: types.FrameType, event: str, arg: object) -> None:
                if event == "call":
                    codes[id(frame.f_code)] = frame.f_code

            sys.setprofile(profile)
            self._profiling = True
        else:
            self.reason = "a profiler is set"
        return self

    def __exit__(self, *exc: object) -> None:
        self.codes.pop(id(CodeRecorder.__exit__.__code__), None)  # this very method
        if self._tool is not None:
            monitoring: Any = sys.monitoring  # type: ignore[attr-defined]
            monitoring.set_events(self._tool, 0)
            monitoring.register_callback(self._tool, monitoring.events.PY_START, None)
            monitoring.free_tool_id(self._tool)
            self._tool = None
        if self._profiling:
            sys.setprofile(None)
            self._profiling = False


@dataclass(frozen=True, slots=True)
class PackReport:
    """What `pack()` did: code objects copied and their bytes, functions repointed, code objects
    left alone (watched by another monitoring tool, or refused by ``replace()``), and how many
    pages the code objects lay on before and after; ``copies`` are the new code objects."""

    codes: int
    bytes: int
    functions: int
    skipped: int
    pages_before: int
    pages_after: int
    copies: tuple[types.CodeType, ...] = field(default=(), repr=False, compare=False)

    def describe(self) -> str:
        """One log line's worth."""
        return (
            f"packed {self.codes} code objects ({self.bytes // 1024} KiB) from "
            f"{self.pages_before} pages into {self.pages_after}, {self.functions} functions "
            f"repointed" + (f", {self.skipped} left alone" if self.skipped else "")
        )


def _watched(code: types.CodeType) -> bool:
    """Whether another sys.monitoring tool has local events on ``code`` (it would lose them)."""
    monitoring: Any = getattr(sys, "monitoring", None)
    if monitoring is None:
        return False
    for tool in range(6):
        if monitoring.get_tool(tool) is not None and monitoring.get_local_events(tool, code):
            return True
    return False


def _place(block: int, size: int, claimed: set[int]) -> None:
    """Make the next allocation of ``size`` bytes come from fresh memory: the first copy of each
    pymalloc size class fills that class's holes (the copies then fill a fresh pool in order);
    a larger one takes what glibc has free for its size, so it comes from the top of the heap."""
    if block:
        if block not in claimed and _holes.pymalloc_layout():
            claimed.add(block)
            _holes.claim_pool(block, _CAP)
    else:
        _holes.claim_top(size, _CAP)


def pack(codes: Iterable[types.CodeType], *, refreeze: bool = False) -> PackReport:
    """Copy ``codes`` into fresh memory, together, and repoint every function object at them.

    A code object among ``codes`` that holds another one in its constants gets the copy there, so
    functions it creates later use the packed code too. Copies an earlier call made are left
    where they are (already together, and specialized by what ran since). Objects an earlier
    ``gc.freeze()`` froze are unfrozen (to find the functions among them) and left for the caller
    to freeze again.

    ``refreeze=True`` is for a process whose frozen objects are a forked parent's (a refork
    mold): the collector stays off for the whole call and everything is frozen again right
    after the repointing, so no collection ever walks, and writes, the parent's objects
    (unfreeze and freeze are list merges). The caller collects its own garbage first, since
    everything young is frozen too.
    """
    enabled = gc.isenabled()
    if refreeze:
        gc.disable()
    try:
        return _pack(codes)
    finally:
        if refreeze:
            gc.freeze()
            if enabled:
                gc.enable()


def _pack(codes: Iterable[types.CodeType]) -> PackReport:
    given = {id(code): code for code in codes if id(code) not in _copy_ids}
    hot = {key: code for key, code in given.items() if not _watched(code)}
    skipped = len(given) - len(hot)
    copies: dict[int, types.CodeType] = {}
    claimed: set[int] = set()

    def copy(code: types.CodeType) -> types.CodeType:
        done = copies.get(id(code))
        if done is not None:
            return done
        consts = code.co_consts
        nested = tuple(
            copy(c) if isinstance(c, types.CodeType) and id(c) in hot else c for c in consts
        )
        changed = any(a is not b for a, b in zip(nested, consts, strict=True))
        size = sys.getsizeof(code)
        _place(_holes.pool_block(size), size, claimed)
        new = code.replace(co_consts=nested) if changed else code.replace()
        copies[id(code)] = new
        return new

    for code in sorted(hot.values(), key=sys.getsizeof):
        try:
            copy(code)
        except Exception:  # a code object replace() refuses: leave it where it is
            skipped += 1
    size = sum(sys.getsizeof(code) for code in copies.values())

    functions = 0
    # Frozen functions are not in gc.get_objects(): unfreeze them, and (unless refreeze) leave
    # them so. Freezing again here would also freeze every young object, hiding it from code
    # that finds objects through the collector (forkmem's own search for database engines); the
    # caller's warm-up or freeze, which follows every rehearsal, freezes them all again.
    if copies:
        gc.unfreeze()
    for obj in gc.get_objects() if copies else ():
        if isinstance(obj, types.FunctionType):
            new = copies.get(id(obj.__code__))
            if new is not None:
                try:
                    obj.__code__ = new
                except Exception:  # an audit hook or a closure mismatch: keep the original
                    continue
                functions += 1
    _originals.extend(hot.values())
    _copies.extend(copies.values())
    _copy_ids.update(map(id, copies.values()))
    return PackReport(
        len(copies),
        size,
        functions,
        skipped,
        _pages(hot.values()),
        _pages(copies.values()),
        tuple(copies.values()),
    )


def _pages(codes: Iterable[types.CodeType], page: int = 4096) -> int:
    """How many pages the code objects lie on (their ``sys.getsizeof`` extent)."""
    return len(
        {p for c in codes for p in range(id(c) // page, (id(c) + sys.getsizeof(c) - 1) // page + 1)}
    )
