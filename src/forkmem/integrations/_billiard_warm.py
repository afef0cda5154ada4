"""Build in the Celery main process what billiard's child initializer would build in each child.

Celery's prefork child initializer asks ``billiard.util.set_pdeathsig`` to kill the child when
its parent dies. When cffi is installed (``cryptography`` requires it, so Airflow and most web
stacks have it), billiard declares ``prctl`` with ``cffi.FFI().cdef()`` there, and the first
``cdef`` of a process imports cffi's C parser (``cffi.cparser``, ``pycparser``) and builds it:
memory private to every child. Declaring the same function once in the parent, before the
freeze, leaves those modules and the cached parser in the heap the children share. Only the
declaration is parsed: ``prctl`` is not called in the parent.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["warm_pdeathsig_parser"]

_logger = logging.getLogger("forkmem.celery")

# billiard's own declaration (billiard/util.py, set_pdeathsig).
_PRCTL = "int prctl (int __option, ...);"


def warm_pdeathsig_parser() -> bool:
    """Parse billiard's ``prctl`` declaration here if its children would; ``True`` if it did."""
    # billiard's test, at call time: it imported cffi if it could. Nothing is imported here.
    cffi = sys.modules.get("cffi")
    if cffi is None or "billiard.util" not in sys.modules:
        return False
    try:
        cffi.FFI().cdef(_PRCTL)
    except Exception:
        # A cffi that cannot parse it fails the same way in billiard, which then ignores it.
        _logger.debug("forkmem: cffi could not parse billiard's prctl declaration", exc_info=True)
        return False
    return True
