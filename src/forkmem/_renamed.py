"""Old module paths kept as deprecated aliases (a leaf).

forkmem 0.1 had ``forkmem/memory.py`` and ``forkmem/warmup.py``, each holding a function of
the same name, so ``import forkmem.memory`` replaced the function ``forkmem.memory`` with the
module. Their code now lives in `forkmem.usage` and `forkmem.warm`; the old paths
import with a ``DeprecationWarning`` and give a module that can also be called like the
function it shadows, so neither ``from forkmem.memory import memory`` nor a later
``forkmem.memory()`` breaks.
"""

from __future__ import annotations

import sys
import types
import warnings
from typing import Any

__all__ = ["alias"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__["_forkmem_function"](*args, **kwargs)


def alias(name: str, new: str, function: Any) -> None:
    """Make module ``name`` (being imported now) a deprecated alias of ``new``, callable as
    ``function``."""
    warnings.warn(
        f"the module {name} is deprecated: import {new} (or use forkmem.{function.__name__}"
        "() and the other names at the top of forkmem)",
        DeprecationWarning,
        stacklevel=3,
    )
    module = sys.modules[name]
    module.__dict__["_forkmem_function"] = function
    module.__class__ = _CallableModule
