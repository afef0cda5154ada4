"""Deprecated: the module ``forkmem.warmup`` is now `forkmem.warm` (see ``_renamed``)."""

from __future__ import annotations

from forkmem._renamed import alias
from forkmem.warm import WarmupReport, warmup

__all__ = ["WarmupReport", "warmup"]

alias(__name__, "forkmem.warm", warmup)
