"""``forkmem doctor``: one screen on the settings that decide how much forked workers share.

[`diagnose()`][forkmem.doctor.diagnose] looks at the bytecode cache, ``sys.dont_write_bytecode``,
transparent huge pages, the garbage collector, the multiprocessing start method and the cgroup
memory limit, and says for each what to do about it. It only reads: no file is written, nothing
imported from the application.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from forkmem._pycbuild import read_source
from forkmem._units import format_bytes

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

    from forkmem._proc_python import PythonProcess

__all__ = ["Diagnosis", "Finding", "diagnose"]

SUPPORTED = ((3, 10), (3, 15))  # the CPython versions forkmem supports, first and last

Level = Literal["ok", "info", "warn"]
_THP_PATH = "/sys/kernel/mm/transparent_hugepage/enabled"


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing the doctor looked at."""

    name: str
    """Short identifier: ``bytecode``, ``dont_write_bytecode``, ``thp``, ``gc``,
    ``start_method``, ``cgroup``."""
    level: Level
    """``"ok"``, ``"info"`` (worth knowing) or ``"warn"`` (costs shared memory now)."""
    value: str
    """What was found, in words."""
    advice: str
    """What to do about it (empty when nothing needs doing)."""
    data: dict[str, Any] = field(default_factory=dict)
    """The raw values, for ``--json``."""


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """Result of [`diagnose()`][forkmem.doctor.diagnose]."""

    findings: tuple[Finding, ...]
    """One per check, in display order."""

    @property
    def ok(self) -> bool:
        """True when no finding is a warning."""
        return all(f.level != "warn" for f in self.findings)

    def summary(self) -> str:
        """The human screen: one line per finding, advice indented below."""
        width = max((len(f.name) for f in self.findings), default=0)
        lines = []
        for f in self.findings:
            lines.append(f"[{f.level:<4}] {f.name:<{width}}  {f.value}")
            if f.advice:
                lines.append(f"       {'':<{width}}  -> {f.advice}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "ok": self.ok,
            "findings": [
                {
                    "name": f.name,
                    "level": f.level,
                    "value": f.value,
                    "advice": f.advice,
                    "data": f.data,
                }
                for f in self.findings
            ],
        }

    def to_json(self, *, indent: int | None = 2) -> str:
        """[`as_dict()`][forkmem.doctor.Diagnosis.as_dict] as a JSON string."""
        import json

        return json.dumps(self.as_dict(), indent=indent, default=str)


def diagnose(*, paths: Sequence[str] | None = None, pid: int | None = None) -> Diagnosis:
    """Run every check and return the findings.

    ``paths`` are the trees whose bytecode cache is checked (default: this interpreter's
    site-packages). Called inside a server process, the collector, freeze count and start
    method are that process's own. A check that cannot read what it needs says so as an
    ``info`` finding; it never raises.

    With ``pid``, check that process from the outside instead (`_diagnose_process()`):
    everything is read from ``/proc``, nothing of it is imported or run. Raises
    [`NoSuchProcess`][forkmem.NoSuchProcess] only when ``pid`` does not exist.
    """
    if pid is not None and pid != os.getpid():
        return _diagnose_process(pid, paths)
    checks: list[tuple[str, Callable[[], Finding]]] = [
        ("bytecode", lambda: _bytecode(paths)),
        ("dont_write_bytecode", _dont_write_bytecode),
        ("thp", _thp),
        ("gc", _gc),
        ("start_method", _start_method),
        ("cgroup", _cgroup),
    ]
    return _run_checks(checks)


def _bytecode(paths: Iterable[str] | None) -> Finding:
    from forkmem.bytecode import check_bytecode, site_dirs

    roots = list(paths) if paths is not None else site_dirs()
    if not roots:
        return Finding("bytecode", "info", "no site-packages directory to check", "")
    report = check_bytecode(paths=roots)
    data = {"paths": roots, "counts": dict(report.counts), "uncached_bytes": report.uncached_bytes}
    n = len(report.files)
    where = ", ".join(roots)
    if report.ok:
        return Finding(
            "bytecode", "ok", f"all {n} source files in {where} have a valid pyc", "", data
        )
    bad = len(report.uncached)
    c = report.counts
    value = (
        f"{bad} of {n} source files have no usable pyc ({c['missing']} missing, {c['stale']} "
        f"stale, {c['unwritable']} unwritable): every new process compiles "
        f"{format_bytes(report.uncached_bytes)}"
    )
    advice = (
        f"compile them when the image is built: forkmem bytecode --fix {where}; "
        "never delete *.pyc from an image"
    )
    return Finding("bytecode", "warn", value, advice, data)


def _dont_write_bytecode() -> Finding:
    env = os.environ.get("PYTHONDONTWRITEBYTECODE")
    data = {"dont_write_bytecode": sys.dont_write_bytecode, "PYTHONDONTWRITEBYTECODE": env}
    how = "PYTHONDONTWRITEBYTECODE is set" if env else "set (-B)"
    return _dont_write_finding(how if sys.dont_write_bytecode else None, data)


def _dont_write_finding(how: str | None, data: dict[str, Any]) -> Finding:
    """``how`` says what turned bytecode writing off, ``None`` when it is on."""
    if how is None:
        return Finding(
            "dont_write_bytecode", "ok", "off: the importer caches what it compiles", "", data
        )
    return Finding(
        "dont_write_bytecode",
        "info",
        f"{how}: no process writes a pyc, missing ones stay missing",
        "fine when every pyc is compiled at build time (check with forkmem bytecode); "
        "otherwise every process compiles every import",
        data,
    )


def _kernel_at_least(major: int, minor: int) -> bool | None:
    try:
        parts = os.uname().release.split(".")
        return (int(parts[0]), int(parts[1].split("-")[0])) >= (major, minor)
    except (ValueError, IndexError, AttributeError):
        return None


def _thp() -> Finding:
    try:
        with open(_THP_PATH) as f:
            text = f.read().strip()
    except OSError:
        return Finding("thp", "info", "transparent huge pages: not available here", "")
    mode = text[text.find("[") + 1 : text.find("]")] if "[" in text else text
    data = {"enabled": mode, "path": _THP_PATH}
    if mode != "always":
        return Finding("thp", "ok", f"transparent huge pages: {mode}", "", data)
    if _kernel_at_least(5, 8) is False:
        return Finding(
            "thp",
            "warn",
            "transparent huge pages: always, on a kernel before 5.8",
            "a write to a shared huge page copies the whole 2 MiB in the child; set "
            "'madvise' or disable THP for the server (prctl PR_SET_THP_DISABLE)",
            data,
        )
    return Finding(
        "thp",
        "info",
        "transparent huge pages: always",
        "kernels >= 5.8 copy 4 KiB on a write to a shared huge page, but huge pages can still "
        "inflate RSS; 'madvise' is the safer default for forking servers",
        data,
    )


def _gc() -> Finding:
    from forkmem.gcinfo import gc_info

    info = gc_info()
    kind, freeze = info.collector, info.freeze_count
    data: dict[str, Any] = {
        "collector": kind,
        "freeze_count": freeze,
        "thresholds": list(info.thresholds),
        "enabled": info.enabled,
    }
    value = f"collector: {kind}, {freeze} objects frozen in this process"
    if info.freeze_is_constant_time:
        advice = (
            "freeze once after loading, before forking: forkmem.frozen() or "
            "forkmem.freeze_around_fork() (O(1) on this collector)"
        )
    else:
        advice = (
            "gc.freeze() walks the heap on this collector: freeze once before the fork loop, "
            "never per fork"
        )
    return Finding("gc", "info", value, advice, data)


def _start_method() -> Finding:
    import multiprocessing

    chosen = multiprocessing.get_start_method(allow_none=True)
    # The first of get_all_start_methods() is the default; asking get_start_method() without
    # allow_none would fix the context as a side effect.
    method = chosen or multiprocessing.get_all_start_methods()[0]
    data = {"start_method": method, "explicitly_set": chosen is not None}
    label = f"multiprocessing start method: {method}" + ("" if chosen else " (default)")
    if method == "fork":
        return Finding("start_method", "ok", label, "", data)
    if method == "forkserver":
        return Finding(
            "start_method",
            "info",
            label,
            "children fork from the forkserver, not from your loaded process: preload the app "
            "there (multiprocessing.set_forkserver_preload) and freeze inside it",
            data,
        )
    return Finding(
        "start_method",
        "warn",
        label,
        "each worker is a fresh interpreter and shares nothing; use fork or forkserver with "
        "preloading for memory sharing",
        data,
    )


def _cgroup(pid: int | None = None) -> Finding:
    from forkmem.cgroup import cgroup_memory

    cg = cgroup_memory(pid)
    if cg is None:
        data: dict[str, Any] = {"current": None, "limit": None, "slab": None}
        return Finding("cgroup", "info", "cgroup memory: not readable here", "", data)
    current, limit, slab = cg.current, cg.limit, cg.slab
    data = {"current": current, "limit": limit, "slab": slab}
    if limit is None:
        value = f"cgroup memory: {format_bytes(current)} used, no limit"
        if slab is not None:
            value += f" ({format_bytes(slab)} kernel slab)"
        return Finding("cgroup", "info", value, "", data)
    share = current / limit if limit else 0.0
    data["fraction"] = share
    value = f"cgroup memory: {format_bytes(current)} of {format_bytes(limit)} ({share:.0%})"
    if slab is not None:
        # Kernel slab (dentries among it) is charged to the container too: PR #58944's
        # pyc-less images grew it through failed bytecode writes.
        value += f", {format_bytes(slab)} of it kernel slab"
    if share >= 0.8:
        return Finding(
            "cgroup",
            "warn",
            value,
            "close to the limit: measure what the workers copy (forkmem memory, "
            "forkmem.cow_report) before raising it",
            data,
        )
    return Finding("cgroup", "ok", value, "", data)


def _run_checks(checks: list[tuple[str, Callable[[], Finding]]]) -> Diagnosis:
    findings = []
    for name, check in checks:
        try:
            findings.append(check())
        except Exception as exc:  # a doctor that crashes helps nobody: report and go on
            findings.append(Finding(name, "info", f"could not check: {exc}", ""))
    return Diagnosis(tuple(findings))


def _diagnose_process(pid: int, paths: Sequence[str] | None) -> Diagnosis:
    from forkmem._proc_python import inspect_python

    target = inspect_python(pid)
    checks: list[tuple[str, Callable[[], Finding]]] = [
        ("runtime", lambda: _runtime(target)),
        ("bytecode", lambda: _target_bytecode(target, paths)),
        ("dont_write_bytecode", lambda: _target_dont_write(target)),
        ("thp", lambda: _target_thp(target)),
        ("cgroup", lambda: _cgroup(pid)),
        ("inside_only", _inside_only),
    ]
    if target.unreadable:
        checks.append(("unreadable", lambda: _unreadable(target)))
    return _run_checks(checks)


def _runtime(t: PythonProcess) -> Finding:
    data: dict[str, Any] = {
        "pid": t.pid,
        "exe": t.exe,
        "version": None if t.version is None else ".".join(map(str, t.version)),
        "free_threaded": t.free_threaded,
        "venv": t.venv,
        "base_prefix": t.base_prefix,
        "extension_modules": t.extensions,
    }
    if t.version is None:
        value = (
            "interpreter not readable"
            if t.exe is None
            else f"{t.exe}: no CPython extension or libpython mapped: not a Python process?"
        )
        return Finding("runtime", "info", value, "", data)
    version = f"CPython {t.version[0]}.{t.version[1]}{' free-threaded' if t.free_threaded else ''}"
    where = f" in {t.venv}" if t.venv else ""
    value = f"{version} ({t.exe or 'exe not readable'}){where}"
    if not SUPPORTED[0] <= t.version <= SUPPORTED[1]:
        first, last = (f"{v[0]}.{v[1]}" for v in SUPPORTED)
        return Finding(
            "runtime", "warn", value, f"forkmem supports CPython {first} to {last}", data
        )
    if t.free_threaded:
        return Finding(
            "runtime",
            "info",
            value,
            "free-threaded builds have no generations: gc.freeze() walks the whole heap and a "
            "freeze in a child dirties every page; freeze once, in the parent",
            data,
        )
    return Finding("runtime", "ok", value, "", data)


def _target_paths(t: PythonProcess) -> list[str]:
    """The target's import path as site would build it: script dir, PYTHONPATH, site dirs and
    the directories their ``.pth`` files add (``import`` lines are code: never run)."""
    # Not the filesystem root: that is the working directory of a `python -m`/`-c` service that
    # systemd started in /, and walking it checks every .py on the machine (minutes, /proc too).
    out = [
        p
        for p in (t.script_dir, *t.pythonpath)
        if p and os.path.isdir(p) and os.path.realpath(p) != "/"
    ]
    for site_dir in t.site_packages:
        out.append(site_dir)
        try:
            names = sorted(n for n in os.listdir(site_dir) if n.endswith(".pth"))
        except OSError:
            continue
        for name in names:
            try:
                # Another user's file, read as root: never a FIFO (open blocks) nor a device.
                raw, _ = read_source(os.path.join(site_dir, name))
            except OSError:  # NotRegular included
                continue
            lines = raw.decode("utf-8", "replace").splitlines()
            for line in lines:
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                path = os.path.normpath(os.path.join(site_dir, line))
                if os.path.isdir(path) and os.path.realpath(path) != "/":
                    out.append(path)
    unique: list[str] = []
    for p in out:
        if not any(p == u or p.startswith(u.rstrip("/") + "/") for u in unique):
            unique = [u for u in unique if not u.startswith(p.rstrip("/") + "/")] + [p]
    return unique


def _target_bytecode(t: PythonProcess, paths: Sequence[str] | None) -> Finding:
    if t.version is None:
        return Finding("bytecode", "info", "not a Python process (or its maps are unreadable)", "")
    if t.cache_tag != sys.implementation.cache_tag:
        exe = t.exe or "its python"
        return Finding(
            "bytecode",
            "info",
            f"its interpreter caches bytecode as {t.cache_tag}, this one as "
            f"{sys.implementation.cache_tag}: not checked",
            f"run the check with its interpreter: {exe} -m forkmem doctor {t.pid}",
            {"cache_tag": t.cache_tag},
        )
    return _bytecode(list(paths) if paths is not None else _target_paths(t))


def _target_dont_write(t: PythonProcess) -> Finding:
    flag = "B" in t.flags
    if t.environ is None:
        return Finding(
            "dont_write_bytecode",
            "info",
            "its environment is not readable (PYTHONDONTWRITEBYTECODE unknown)",
            "",
        )
    env = t.environ.get("PYTHONDONTWRITEBYTECODE")
    data = {"PYTHONDONTWRITEBYTECODE": env, "-B": flag}
    how = "PYTHONDONTWRITEBYTECODE is set" if env else "started with -B"
    return _dont_write_finding(how if env or flag else None, data)


def _target_thp(t: PythonProcess) -> Finding:
    system = _thp()
    if t.thp_disabled:
        data = dict(system.data, process_disabled=True)
        return Finding("thp", "ok", f"{system.value}; disabled for this process", "", data)
    return system


def _inside_only() -> Finding:
    return Finding(
        "inside_only",
        "info",
        "the collector, freeze count and multiprocessing start method are only visible "
        "inside the process",
        "call forkmem.doctor.diagnose() in it (e.g. from a gunicorn when_ready hook) to see them",
    )


def _unreadable(t: PythonProcess) -> Finding:
    return Finding(
        "unreadable",
        "info",
        f"{len(t.unreadable)} file(s) not readable: " + "; ".join(t.unreadable),
        "",
        {"files": list(t.unreadable)},
    )
