"""forkmem: keep forked workers' memory shared, and measure what copy-on-write saves.

The public API is everything in ``__all__``; submodules whose names start with ``_`` are private.
``import forkmem`` stays cheap: psutil, ctypes and subprocess are imported on first use.
"""

from __future__ import annotations

from forkmem._units import format_bytes, parse_size
from forkmem._version import __version__
from forkmem.bytecode import (
    BytecodeFile,
    BytecodeReport,
    CompileResult,
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
from forkmem.freeze import FreezeAroundFork, FreezeReport, freeze_around_fork, frozen, gc_paused
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
    "BytecodeReport",
    "CompileResult",
    "check_bytecode",
    "compile_bytecode",
    "warn_if_missing_bytecode",
    # warmup
    "WarmupReport",
    "warmup",
]
