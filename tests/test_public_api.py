"""The public surface: exported, documented, typed, and cheap to import."""

from __future__ import annotations

import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import forkmem

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Public modules besides the top level whose own __all__ is part of the API.
SUBMODULES = ["forkmem.testing", "forkmem.pool", "forkmem.metrics", "forkmem.recycle"]


def _docs_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md"))


def _public() -> list[tuple[str, str, object]]:
    names = [("forkmem", n, getattr(forkmem, n)) for n in forkmem.__all__]
    for modname in SUBMODULES:
        mod = importlib.import_module(modname)
        names += [(modname, n, getattr(mod, n)) for n in getattr(mod, "__all__", [])]
    return names


PUBLIC = _public()


def test_all_names_resolve() -> None:
    assert len(set(forkmem.__all__)) == len(forkmem.__all__), "duplicate names in __all__"
    for name in forkmem.__all__:
        assert hasattr(forkmem, name), name


# Ids by name only: object reprs carry addresses, which differ between xdist workers.
@pytest.mark.parametrize(("module", "name", "obj"), PUBLIC, ids=[f"{m}.{n}" for m, n, _ in PUBLIC])
def test_public_name_is_documented(module: str, name: str, obj: object) -> None:
    if name == "__version__":
        return
    if inspect.isclass(obj) or callable(obj):
        assert inspect.getdoc(obj), f"{module}.{name} has no docstring"
    qualified = rf"{re.escape(module)}\.{re.escape(name)}\b"
    pattern = rf"(?<![\w.]){qualified}|::: {qualified}"
    assert re.search(pattern, _docs_text()), f"{module}.{name} is not mentioned in docs/"


def test_py_typed_is_shipped() -> None:
    assert (Path(forkmem.__file__).parent / "py.typed").exists()


def test_import_is_cheap() -> None:
    # Importing forkmem must not drag in psutil or ctypes: services import it at start-up.
    code = (
        "import sys, forkmem; "
        "heavy = sorted(m for m in ('psutil', 'ctypes', 'json', 'subprocess', 'pytest') "
        "if m in sys.modules); print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_entry_point_runs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "forkmem", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"forkmem {forkmem.__version__}"


def test_cli_unknown_command_is_a_usage_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "forkmem", "no-such-command"], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "invalid choice" in out.stderr


def test_import_loads_at_most_three_forkmem_modules() -> None:
    code = (
        "import sys, forkmem; "
        "print(','.join(sorted(m for m in sys.modules if m.startswith('forkmem'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = out.stdout.strip().split(",")
    assert loaded[0] == "forkmem"
    assert len(loaded) <= 3, loaded


def test_every_name_loads_lazily_from_its_home() -> None:
    # Each name of the table resolves in a fresh interpreter, and dir() lists them all.
    code = (
        "import forkmem; missing = [n for n in forkmem.__all__ if n not in dir(forkmem)]; "
        "objs = [getattr(forkmem, n) for n in forkmem.__all__]; print(len(objs), missing)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(forkmem.__all__)), "[]"]
    with pytest.raises(AttributeError, match="no_such_name"):
        forkmem.no_such_name  # type: ignore[attr-defined]  # noqa: B018


@pytest.mark.parametrize("name", ["memory", "warmup"])
def test_no_module_is_shadowed_by_a_function(name: str) -> None:
    # forkmem 0.1's module paths: importing one gives a module (with a DeprecationWarning),
    # and the top-level function of the same name still works afterwards.
    code = (
        "import importlib, types, warnings, forkmem\n"
        "warnings.simplefilter('error')\n"
        "function = getattr(forkmem, NAME)\n"
        "try:\n"
        "    importlib.import_module('forkmem.' + NAME)\n"
        "except DeprecationWarning as exc:\n"
        "    print('warned:', exc)\n"
        "warnings.simplefilter('ignore')\n"
        "module = importlib.import_module('forkmem.' + NAME)\n"
        "print(isinstance(module, types.ModuleType), getattr(module, NAME) is function)\n"
        "print(type(getattr(forkmem, NAME)(**KWARGS)).__name__)\n"
    )
    kwargs = {"memory": "{}", "warmup": "{'hash_strings': False, 'trim': False}"}[name]
    code = f"NAME = {name!r}\nKWARGS = {kwargs}\n" + code
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"warned: the module forkmem.{name} is deprecated")
    assert lines[1] == "True True"
    assert lines[2] == {"memory": "MemoryUsage", "warmup": "WarmupReport"}[name]
