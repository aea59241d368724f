"""The package's layering: no module of ``app`` imports, however indirectly, one that imports it."""

from __future__ import annotations

import ast
from pathlib import Path

APP = Path(__file__).resolve().parent.parent / "app"


def module_name(path: Path) -> str:
    parts = path.relative_to(APP.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, here: str, package: str, modules: set[str]) -> set[str]:
    """The app modules a source imports anywhere: at the top, in functions, for type checking."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                # ``from app.storage import sqlite`` names a module; ``import NotFound``, a name.
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {name for name in found if name in modules and name != here}


def import_graph() -> dict[str, set[str]]:
    """Each app module and the app modules it imports."""
    paths = sorted(APP.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    graph = {}
    for path in paths:
        here = module_name(path)
        package = here if path.name == "__init__.py" else here.rpartition(".")[0]
        graph[here] = imports_of(path.read_text(), here, package, modules)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (as a path that returns to its start), or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        if module in on_path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        path.append(module)
        on_path.add(module)
        for target in sorted(graph[module]):
            if cycle := visit(target):
                return cycle
        path.pop()
        on_path.remove(module)
        done.add(module)
        return None

    for module in sorted(graph):
        if cycle := visit(module):
            return cycle
    return None


def test_app_has_no_import_cycle() -> None:
    """No module in app/ imports itself through others (fails on any circle, however drawn)."""
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle)


def test_walk_sees_imports_inside_functions_and_type_checking_blocks() -> None:
    """A lazy or type-checking-only import is an edge like any other."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from app.middleware import Scopes\n"
        "def f():\n    from .views import common\n    import app.main\n"
    )
    modules = {"app.middleware", "app.views", "app.views.common", "app.main", "app.keys"}
    found = imports_of(source, "app.keys", "app", modules)
    assert found == {"app.middleware", "app.views.common", "app.main"}


def test_cycle_finder_reports_a_circle_through_three_modules() -> None:
    """A circle of three modules is found and named in order."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    graph["c"] = set()
    assert find_cycle(graph) is None
