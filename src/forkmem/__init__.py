"""forkmem: keep forked workers' memory shared, and measure what copy-on-write saves.

The public API is everything in ``__all__``; submodules whose names start with ``_`` are private.
``import forkmem`` stays cheap: heavy imports (psutil, ctypes) happen on first use.
"""

from __future__ import annotations

from forkmem._units import format_bytes, parse_size
from forkmem._version import __version__
from forkmem.errors import (
    AccessDenied,
    ChildCrashed,
    ChildTimeout,
    CopyLimitExceeded,
    ForkmemError,
    ForkmemWarning,
    InvalidArgument,
    NoSuchProcess,
    ProcParseError,
    UnsupportedPlatform,
    UnsupportedRuntime,
)

# --- measurement (issue 2) ---
# --- freeze and fork hooks (issue 3) ---
# --- bytecode cache (issue 4) ---
# --- warmup (issue 5) ---

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
    "NoSuchProcess",
    "ProcParseError",
    "UnsupportedPlatform",
    "UnsupportedRuntime",
    # measurement (issue 2)
    # freeze and fork hooks (issue 3)
    # bytecode cache (issue 4)
    # warmup (issue 5)
]
