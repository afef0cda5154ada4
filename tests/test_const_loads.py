"""CPython 3.14's unchecked constant loads, rewritten once immortalization made the constants
immortal (forkmem._const_loads): the right instructions change, the code still runs the same, and
a forked child that runs the code no longer copies the pages of its constants."""

from __future__ import annotations

import dis
import json
import subprocess
import sys
import textwrap
import types

import pytest

from _immortal_runtime import IMMORTAL_SUPPORTED, needs_immortal
from forkmem import _const_loads
from forkmem._immortal import immortalize

pytestmark = pytest.mark.linux_only

needs_pair = pytest.mark.skipif(
    not _const_loads.available(), reason="no LOAD_CONST_MORTAL/IMMORTAL pair (CPython 3.14 only)"
)


def test_available_exactly_where_the_pair_exists() -> None:
    expected = IMMORTAL_SUPPORTED and sys.version_info[:2] == (3, 14)
    assert _const_loads.available() is expected
    if not expected:
        assert _const_loads.retag([test_available_exactly_where_the_pair_exists.__code__]) == 0


def _ops(code: types.CodeType) -> list[tuple[str, object]]:
    return [
        (i.opname, i.argval)
        for i in dis.get_instructions(code, adaptive=True)
        if i.opname.startswith("LOAD_CONST")
    ]


def _many_constants(n: int) -> types.FunctionType:
    # n distinct tuple constants in one function: indexes past 255 need EXTENDED_ARG.
    body = "\n".join(f"    x{i} = ({10**9 + i}, 'const {i}')" for i in range(n))
    namespace: dict[str, object] = {}
    exec(f"def f():\n{body}\n    return x0, x{n - 1}\n", namespace)
    func = namespace["f"]
    assert isinstance(func, types.FunctionType)
    return func


@needs_immortal
@needs_pair
def test_mortal_loads_of_immortal_constants_are_rewritten() -> None:
    func = _many_constants(300)
    expected = func()
    before = _ops(func.__code__)
    assert {name for name, _ in before} == {"LOAD_CONST_MORTAL"}
    assert len(before) == 300
    immortalize([func.__code__])  # its constants (and it) become immortal: a small, kept leak
    after = _ops(func.__code__)
    assert [value for _, value in after] == [value for _, value in before]  # same constants
    assert {name for name, _ in after} == {"LOAD_CONST_IMMORTAL"}
    assert func() == expected
    assert _const_loads.retag([func.__code__]) == 0  # nothing left to rewrite


@needs_immortal
@needs_pair
def test_mortal_constants_and_unknown_instructions_are_left_alone() -> None:
    namespace: dict[str, object] = {}
    exec("def g():\n    return (10**9 + 7, 'still mortal')\n", namespace)
    g = namespace["g"]
    assert isinstance(g, types.FunctionType)
    g()
    assert _const_loads.retag([g.__code__]) == 0  # its constant is mortal: the right form
    assert _ops(g.__code__)[0][0] == "LOAD_CONST_MORTAL"

    func = _many_constants(3)
    func()
    monitoring = sys.monitoring  # type: ignore[attr-defined]
    tool = next(t for t in (4, 3, 2) if monitoring.get_tool(t) is None)
    monitoring.use_tool_id(tool, "forkmem-test")
    try:
        # Local events instrument the code: its opcodes are not ones retag() can step over.
        monitoring.set_local_events(tool, func.__code__, monitoring.events.LINE)
        func()
        immortalize([func.__code__])
        assert _const_loads.retag([func.__code__]) == 0
        assert func()[0] == (10**9, "const 0")
    finally:
        monitoring.set_local_events(tool, func.__code__, 0)
        monitoring.free_tool_id(tool)
    assert func()[0] == (10**9, "const 0")


_CHILD = """
import json, os, sys
import forkmem
import forkmem._immortal as immortal
from forkmem.testing._pagemap import copied_pages, page_snapshot

if sys.argv[1] == "off":
    immortal.retag = lambda codes: 0
n = 3000
src = "\\n".join(f"def f{i}():\\n    return ({10**9 + i}, 'c {i}', {i}.5)\\n" for i in range(n))
namespace = {}
exec(src, namespace)
funcs = [namespace[f"f{i}"] for i in range(n)]
consts = [f() for f in funcs for _ in range(8)][::8]
forkmem.warmup(immortalize=True)
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    os.close(read)
    snap = page_snapshot()
    for _ in range(5):
        for f in funcs:
            f()
    pages, size = copied_pages(snap)
    mine = {id(c) // size for c in consts}
    os.write(write, json.dumps({"const_pages": len(mine), "copied": len(mine & pages)}).encode())
    os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    out = pipe.read()
os.waitpid(pid, 0)
print(out)
"""


def _child_copies(mode: str) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD), mode],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, int] = json.loads(proc.stdout)
    return result


@needs_immortal
@needs_pair
def test_forked_child_running_the_code_copies_no_constant_pages() -> None:
    without = _child_copies("off")
    with_retag = _child_copies("on")
    # Without the rewrite the child's unchecked increments copy most constant pages.
    assert without["const_pages"] > 20
    assert without["copied"] >= 0.5 * without["const_pages"], without
    assert with_retag["copied"] <= 0.05 * with_retag["const_pages"] + 2, with_retag
