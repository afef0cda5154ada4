"""Where the immortalization tests expect warmup(immortalize=True) to work, and what CPython
itself writes into an immortal object's header there (Include/refcount.h)."""

from __future__ import annotations

import sys
import sysconfig

import pytest

IMMORTAL_SUPPORTED = (
    sys.implementation.name == "cpython"
    and sys.version_info >= (3, 12)
    and not hasattr(sys, "gettotalrefcount")
    and not sysconfig.get_config_var("Py_GIL_DISABLED")
)
needs_immortal = pytest.mark.skipif(
    not IMMORTAL_SUPPORTED, reason="needs a CPython 3.12+ release build with the GIL"
)
# The low 32 bits: 3.14 raised INCREF's threshold to _Py_IMMORTAL_INITIAL_REFCNT (3 << 30);
# 3.12/3.13 use UINT32_MAX. The upper word: 3.14+ set _Py_IMMORTAL_FLAGS (ob_flags bit 0).
IMMORTAL_WORD = 3 << 30 if sys.version_info >= (3, 14) else 2**32 - 1
IMMORTAL_FLAGS = 1 << 16 if sys.version_info >= (3, 14) else 0
