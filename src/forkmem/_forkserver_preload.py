"""Imported by the multiprocessing fork server, last in its preload list: freezes its heap.

Workers of a "forkserver" pool are forked from the fork server, not from the parent, so the
freeze that keeps their inherited heap out of the collector's reach has to run there, after the
modules the server preloads (``__main__`` and whatever ``set_forkserver_preload`` named).
[`forkmem.pool.fork_pool()`][forkmem.pool.fork_pool] puts this module at the end of that list.
Importing it freezes the importing process: it is not meant to be imported anywhere else.

``FORKMEM_FORKSERVER_WARMUP=1`` in the environment (set by ``warmup=True``) runs
[`forkmem.warmup()`][forkmem.warm.warmup] instead of a plain collect-and-freeze.
"""

from __future__ import annotations

import logging
import os

from forkmem.freeze import FreezeReport, prepare

__all__: list[str] = []

_logger = logging.getLogger("forkmem.pool")


def _freeze_here() -> FreezeReport | None:
    warmup = os.environ.get("FORKMEM_FORKSERVER_WARMUP") == "1"
    try:
        report = prepare(warmup=warmup)
    except Exception:
        # The fork server must come up even if the freeze cannot run (its workers are then
        # merely unfrozen, as without forkmem).
        _logger.exception("forkmem could not freeze the fork server's heap")
        return None
    return report


#: What the freeze did in this process (``None`` if it failed).
REPORT: FreezeReport | None = _freeze_here()
