"""What compiling the uncached files costs a new process (``forkmem bytecode --cost``).

Two fresh interpreters (``sys.executable -I``), never this one and never a fork: the first
compiles the sources with ``compile()`` (nothing is executed) and keeps the code objects, as a
process that imports them would; the second loads the same code objects from marshal data, as
it would from valid pycs. Each reports its CPU time and the growth of its private memory
(Private_Clean + Private_Dirty from /proc/self/smaps_rollup). Both run with ``-B`` so no pyc
is written anywhere, and the marshal data passes through a temporary directory that is removed
afterwards. (A temporary ``pycache_prefix`` would also keep the tree clean, but it makes the
measuring process compile its own stdlib imports first; the memory that leaves behind is then
reused by the measured compile and hides its cost.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from forkmem._units import format_bytes
from forkmem.errors import ChildCrashed, ChildTimeout

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["CompileCost", "measure_compile_cost"]

_CHILD = r"""
import gc, json, marshal, os, sys, time

mode, opt, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]

def private():
    try:
        total = 0
        with open("/proc/self/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
        return total, "smaps_rollup"
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss"

blobs = []
for path in json.load(sys.stdin):
    try:
        with open(path, "rb") as f:
            blobs.append((path, f.read()))
    except OSError:
        pass
gc.collect()
keep, failed = [], 0
mem0, how = private()
cpu0 = time.process_time()
for path, data in blobs:
    try:
        if mode == "compile":
            keep.append(compile(data, path, "exec", dont_inherit=True, optimize=opt))
        else:
            keep.append(marshal.loads(data))
    except (SyntaxError, ValueError, EOFError, TypeError):
        failed += 1
cpu = time.process_time() - cpu0
gc.collect()
mem = private()[0] - mem0
written = []
if mode == "compile":
    for i, code in enumerate(keep):
        name = os.path.join(outdir, f"{i}.marshal")
        with open(name, "wb") as f:
            f.write(marshal.dumps(code))
        written.append(name)
json.dump({"cpu": cpu, "private": mem, "how": how, "failed": failed,
           "files": len(blobs), "bytes": sum(len(d) for _, d in blobs), "written": written},
          sys.stdout)
"""


@dataclass(frozen=True, slots=True)
class CompileCost:
    """CPU time and private memory a new process spends on files without usable pycs."""

    files: int
    """Source files compiled."""
    source_bytes: int
    """Their total size."""
    failed: int
    """Files that did not compile (syntax errors): the importer would fail on them too."""
    compile_cpu: float
    """CPU seconds to compile them from source (what each new process pays today)."""
    compile_private: int
    """Private memory growth (bytes) after compiling them, code objects kept alive."""
    load_cpu: float
    """CPU seconds to load the same code from bytecode (what valid pycs would cost)."""
    load_private: int
    """Private memory growth (bytes) after loading them from bytecode."""
    memory_source: str
    """Where memory was read: ``"smaps_rollup"`` (private memory) or ``"ru_maxrss"``."""

    def summary(self) -> str:
        """Two lines for humans."""
        return (
            f"compiling {self.files} files ({format_bytes(self.source_bytes)} of source) in a "
            f"new process: {self.compile_cpu:.3f} s CPU, "
            f"{format_bytes(self.compile_private)} private memory\n"
            f"loading the same from bytecode: {self.load_cpu:.3f} s CPU, "
            f"{format_bytes(self.load_private)} private memory "
            f"(every new process pays the difference)"
        )

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "files": self.files,
            "source_bytes": self.source_bytes,
            "failed": self.failed,
            "compile_cpu_s": self.compile_cpu,
            "compile_private_bytes": self.compile_private,
            "load_cpu_s": self.load_cpu,
            "load_private_bytes": self.load_private,
            "memory_source": self.memory_source,
        }


def _run_child(
    mode: str, paths: Sequence[str], optimization: int, tmp: str, timeout: float
) -> dict[str, Any]:
    import json
    import subprocess
    import sys

    cmd = [sys.executable, "-I", "-B", "-c", _CHILD]
    try:
        proc = subprocess.run(
            [*cmd, mode, str(optimization), tmp],
            input=json.dumps(list(paths)),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ChildTimeout(f"the {mode} measurement took longer than {timeout} s") from None
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ChildCrashed(
            f"the {mode} measurement process exited {proc.returncode}: {tail}",
            exitcode=proc.returncode,
        )
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def measure_compile_cost(
    sources: Sequence[str], *, optimization: int = 0, timeout: float = 600.0
) -> CompileCost:
    """Measure, in fresh subprocesses, what compiling ``sources`` costs versus loading pycs."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="forkmem-cost-") as tmp:
        compiled = _run_child("compile", sources, optimization, tmp, timeout)
        loaded = _run_child("load", compiled["written"], optimization, tmp, timeout)
    return CompileCost(
        files=compiled["files"],
        source_bytes=compiled["bytes"],
        failed=compiled["failed"],
        compile_cpu=compiled["cpu"],
        compile_private=compiled["private"],
        load_cpu=loaded["cpu"],
        load_private=loaded["private"],
        memory_source=compiled["how"],
    )
