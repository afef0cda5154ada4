"""A module loaded through ``importlib.util.LazyLoader``: it runs on its first attribute access,
which here creates a marker file, so a test can tell whether forkmem executed it."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import types
    from collections.abc import Iterator
    from pathlib import Path


@contextlib.contextmanager
def lazy_module(folder: Path, name: str) -> Iterator[tuple[types.ModuleType, Path, Path]]:
    """Yield (module, its source, the marker its execution would create), in sys.modules."""
    marker = folder / f"{name}.executed"
    src = folder / f"{name}.py"
    src.write_text(f"open({str(marker)!r}, 'w').close()\n")
    spec = importlib.util.spec_from_file_location(name, src)
    assert spec is not None
    assert spec.loader is not None
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module, src, marker
    finally:
        sys.modules.pop(name, None)
