"""forkmem's own imports run one way: no cycle, and nothing below the CLI imports the CLI.

Every module under src/forkmem is read with ``ast``, so function-level imports count too (a
lazy import that closes a loop is still a loop); imports under ``if TYPE_CHECKING:`` do not
run and are left out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import forkmem

ROOT = Path(forkmem.__file__).resolve().parent


def _modules() -> dict[str, tuple[Path, bool]]:
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        found[".".join(parts)] = (path, package)
    return found


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str) -> dict[str, int]:
    """The forkmem modules ``name`` imports, each with the line of its first import."""
    path, package = MODULES[name]
    here = name if package else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target.split(".")[0] == "forkmem":
            found.setdefault(target, line)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                add(sub if sub in MODULES else module, node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycles() -> list[list[str]]:
    """Every strongly connected group of more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH.get(node, {}):
            if nxt not in MODULES:
                continue
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in GRAPH[node]:
                groups.append(sorted(group))

    for node in sorted(MODULES):
        if node not in index:
            connect(node)
    return groups


def test_the_reader_sees_the_package() -> None:
    # Guards the test itself: a reader that found nothing would pass everything.
    assert "forkmem.cli" in MODULES
    assert "forkmem.integrations.airflow.session" in MODULES
    assert "forkmem.usage" in GRAPH["forkmem.tree"]
    # Function-level imports count (the CLI loads its command modules' work on demand).
    assert "forkmem.bytecode" in GRAPH["forkmem.cli._bytecode"]


def test_no_import_cycle() -> None:
    cycles = _cycles()
    detail = [
        f"{m} imports {', '.join(f'{n} (line {GRAPH[m][n]})' for n in c if n in GRAPH[m])}"
        for c in cycles
        for m in c
    ]
    assert cycles == [], "import cycles in src/forkmem:\n" + "\n".join(detail)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith("forkmem.cli")))
def test_nothing_below_the_cli_imports_it(name: str) -> None:
    wrong = {m: line for m, line in GRAPH[name].items() if m.split(".")[:2] == ["forkmem", "cli"]}
    if name == "forkmem.__main__":
        wrong.pop("forkmem.cli", None)  # ``python -m forkmem`` is the CLI's other door
    assert wrong == {}, f"{name} imports the CLI: {wrong}"


def test_no_module_over_500_lines() -> None:
    long = {
        name: n
        for name, (path, _) in MODULES.items()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 500
    }
    assert long == {}


# Airflow internals forkmem relies on; only integrations/airflow/_private_api.py may name them.
AIRFLOW_PRIVATE = frozenset(
    {
        "_collect_results",
        "_create_process",
        "_execute",
        "_file_queue",
        "_fork_main",
        "_make_frame",
        "_parse_file",
        "_pre_import_airflow_modules",
        "_processors",
        "_RequestFrame",
        "_run_parsing_loop",
    }
)


def _private_touches(path: Path) -> list[str]:
    touches = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        name = None
        if isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = node.name  # an override, such as def _create_process(...)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
        ):
            name = node.args[1].value
        if name in AIRFLOW_PRIVATE:
            touches.append(f"{path.name}:{node.lineno}: {name}")
    return touches


def test_airflow_internals_are_touched_in_one_module() -> None:
    package = ROOT / "integrations" / "airflow"
    assert _private_touches(package / "_private_api.py"), "the list no longer matches the module"
    others = [p for p in sorted(package.glob("*.py")) if p.name != "_private_api.py"]
    assert [t for p in others for t in _private_touches(p)] == []


def _private_names_taken(name: str) -> list[str]:
    """``from forkmem.x import _y`` (``_y`` no module), ``x._y`` on an imported forkmem module."""
    path, _ = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules: set[str] = set()  # local names bound to forkmem modules
    taken = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level:
            if not (node.module or "").startswith("forkmem"):
                continue
            for alias in node.names:
                if f"{node.module}.{alias.name}" in MODULES:
                    modules.add(alias.asname or alias.name)
                elif alias.name.startswith("_") and not alias.name.startswith("__"):
                    taken.append(f"line {node.lineno}: from {node.module} import {alias.name}")
        elif isinstance(node, ast.Import):
            modules.update(a.asname for a in node.names if a.asname and a.name in MODULES)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            taken.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return taken


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_module_takes_a_siblings_private_name(name: str) -> None:
    # A private module is fine to import inside the package; a private *name* of another
    # module is not: give it a public-in-package name in its module instead.
    assert _private_names_taken(name) == []
