"""Deprecated: the module ``forkmem.memory`` is now `forkmem.usage` (see ``_renamed``)."""

from __future__ import annotations

from forkmem._renamed import alias
from forkmem.usage import MemoryUsage, RssBreakdown, memory, memory_many, rss_breakdown

__all__ = ["MemoryUsage", "RssBreakdown", "memory", "memory_many", "rss_breakdown"]

alias(__name__, "forkmem.usage", memory)
