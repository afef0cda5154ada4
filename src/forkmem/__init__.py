"""forkmem: keep forked workers' memory shared, and measure what copy-on-write saves.

The public API is everything in ``__all__``; submodules whose names start with ``_`` are private.
``import forkmem`` loads almost nothing: each name is imported from its module on first use
(PEP 562), so a process that only needs ``forkmem.memory`` never pays for the bytecode check,
and the ``forkmem`` command starts fast. psutil, ctypes and subprocess load later still.
"""

from __future__ import annotations

from forkmem._version import __version__

# Not ``typing.TYPE_CHECKING``: importing typing alone costs more than the rest of this module
# (type checkers treat any constant of this name the same way).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from forkmem._units import format_bytes, parse_size
    from forkmem.bytecode import (
        BytecodeFile,
        BytecodeProblem,
        BytecodeReport,
        CompileFailure,
        CompileResult,
        SkippedModule,
        check_bytecode,
        compile_bytecode,
        warn_if_missing_bytecode,
    )
    from forkmem.cgroup import CgroupMemory, cgroup_memory
    from forkmem.errors import (
        AccessDenied,
        ChildCrashed,
        ChildTimeout,
        CopyLimitExceeded,
        ForkmemError,
        ForkmemWarning,
        InvalidArgument,
        MissingDependency,
        NoSuchProcess,
        ProcParseError,
        UnsafeToFork,
        UnsupportedPlatform,
        UnsupportedRuntime,
        WorkerLost,
    )
    from forkmem.forkinfo import ForkInfo, fork_info
    from forkmem.freeze import (
        FreezeAroundFork,
        FreezeReport,
        freeze_around_fork,
        freeze_heap,
        frozen,
        gc_paused,
    )
    from forkmem.gcinfo import GcInfo, gc_info
    from forkmem.hooks import (
        ForkHook,
        HookError,
        after_fork_in_child,
        after_fork_in_parent,
        at_fork,
        before_fork,
        fork_hooks,
        hook_errors,
        run_fork_hooks,
    )
    from forkmem.recycle import RecycleEvent, RecyclePolicy, RecycleStats, recycle_stats
    from forkmem.tree import CowReport, TreeUsage, cow_report, memory_tree
    from forkmem.usage import MemoryUsage, RssBreakdown, memory, rss_breakdown
    from forkmem.warm import WarmupReport, warmup

# Where each public name lives; ``__getattr__`` imports it from there on first use.
_HOME: dict[str, str] = {
    "RecycleEvent": "forkmem.recycle",
    "RecyclePolicy": "forkmem.recycle",
    "RecycleStats": "forkmem.recycle",
    "recycle_stats": "forkmem.recycle",
    "format_bytes": "forkmem._units",
    "parse_size": "forkmem._units",
    "BytecodeFile": "forkmem.bytecode",
    "BytecodeProblem": "forkmem.bytecode",
    "BytecodeReport": "forkmem.bytecode",
    "CompileFailure": "forkmem.bytecode",
    "CompileResult": "forkmem.bytecode",
    "SkippedModule": "forkmem.bytecode",
    "check_bytecode": "forkmem.bytecode",
    "compile_bytecode": "forkmem.bytecode",
    "warn_if_missing_bytecode": "forkmem.bytecode",
    "CgroupMemory": "forkmem.cgroup",
    "cgroup_memory": "forkmem.cgroup",
    "AccessDenied": "forkmem.errors",
    "ChildCrashed": "forkmem.errors",
    "ChildTimeout": "forkmem.errors",
    "CopyLimitExceeded": "forkmem.errors",
    "ForkmemError": "forkmem.errors",
    "ForkmemWarning": "forkmem.errors",
    "InvalidArgument": "forkmem.errors",
    "WorkerLost": "forkmem.errors",
    "UnsafeToFork": "forkmem.errors",
    "MissingDependency": "forkmem.errors",
    "NoSuchProcess": "forkmem.errors",
    "ProcParseError": "forkmem.errors",
    "UnsupportedPlatform": "forkmem.errors",
    "UnsupportedRuntime": "forkmem.errors",
    "ForkInfo": "forkmem.forkinfo",
    "fork_info": "forkmem.forkinfo",
    "FreezeAroundFork": "forkmem.freeze",
    "FreezeReport": "forkmem.freeze",
    "freeze_around_fork": "forkmem.freeze",
    "freeze_heap": "forkmem.freeze",
    "frozen": "forkmem.freeze",
    "gc_paused": "forkmem.freeze",
    "GcInfo": "forkmem.gcinfo",
    "gc_info": "forkmem.gcinfo",
    "ForkHook": "forkmem.hooks",
    "HookError": "forkmem.hooks",
    "after_fork_in_child": "forkmem.hooks",
    "after_fork_in_parent": "forkmem.hooks",
    "at_fork": "forkmem.hooks",
    "before_fork": "forkmem.hooks",
    "fork_hooks": "forkmem.hooks",
    "hook_errors": "forkmem.hooks",
    "run_fork_hooks": "forkmem.hooks",
    "CowReport": "forkmem.tree",
    "TreeUsage": "forkmem.tree",
    "cow_report": "forkmem.tree",
    "memory_tree": "forkmem.tree",
    "MemoryUsage": "forkmem.usage",
    "RssBreakdown": "forkmem.usage",
    "memory": "forkmem.usage",
    "rss_breakdown": "forkmem.usage",
    "WarmupReport": "forkmem.warm",
    "warmup": "forkmem.warm",
}

__all__ = [
    "__version__",
    "format_bytes",
    "parse_size",
    # errors
    "AccessDenied",
    "ChildCrashed",
    "ChildTimeout",
    "CopyLimitExceeded",
    "ForkmemError",
    "ForkmemWarning",
    "InvalidArgument",
    "MissingDependency",
    "NoSuchProcess",
    "ProcParseError",
    "UnsafeToFork",
    "UnsupportedPlatform",
    "UnsupportedRuntime",
    "WorkerLost",
    # measurement
    "CgroupMemory",
    "CowReport",
    "MemoryUsage",
    "RssBreakdown",
    "TreeUsage",
    "cgroup_memory",
    "cow_report",
    "memory",
    "memory_tree",
    "rss_breakdown",
    # freezing and fork hooks
    "ForkHook",
    "ForkInfo",
    "FreezeAroundFork",
    "FreezeReport",
    "GcInfo",
    "HookError",
    "after_fork_in_child",
    "after_fork_in_parent",
    "at_fork",
    "before_fork",
    "fork_hooks",
    "fork_info",
    "freeze_around_fork",
    "freeze_heap",
    "frozen",
    "gc_info",
    "gc_paused",
    "hook_errors",
    "run_fork_hooks",
    # recycling workers by memory
    "RecycleEvent",
    "RecyclePolicy",
    "RecycleStats",
    "recycle_stats",
    # bytecode cache
    "BytecodeFile",
    "BytecodeProblem",
    "BytecodeReport",
    "CompileFailure",
    "CompileResult",
    "SkippedModule",
    "check_bytecode",
    "compile_bytecode",
    "warn_if_missing_bytecode",
    # warmup
    "WarmupReport",
    "warmup",
]


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'forkmem' has no attribute {name!r}")
    value = getattr(__import__(home, fromlist=[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
