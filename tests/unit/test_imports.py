"""Imports between the top-level packages go one way: the layering in the README holds."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# celeryconfig.py belongs to the tasks layer: tasks.app loads it by name, it reads tasks.names.
LAYER_OF_MODULE = {"celeryconfig": "tasks"}
PACKAGES = ("scribes", "api_shim", "workers", "tasks", "rag")


def _layer(module: str) -> str | None:
    top = module.split(".", 1)[0]
    top = LAYER_OF_MODULE.get(top, top)
    return top if top in PACKAGES else None


def _sources() -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {name: sorted((ROOT / name).rglob("*.py")) for name in PACKAGES}
    found["tasks"].append(ROOT / "celeryconfig.py")
    return found


def import_graph() -> dict[str, dict[str, str]]:
    """{package: {imported package: where}}, from every import statement, lazy ones too."""
    graph: dict[str, dict[str, str]] = {name: {} for name in PACKAGES}
    for package, files in _sources().items():
        for path in files:
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    target = _layer(name)
                    if target is not None and target != package:
                        where = f"{path.relative_to(ROOT)}:{node.lineno}"
                        graph[package].setdefault(target, where)
    return graph


def find_cycle(graph: dict[str, dict[str, str]]) -> list[str] | None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done:
            return None
        visiting.append(node)
        for target in graph[node]:
            cycle = visit(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in graph:
        cycle = visit(start)
        if cycle:
            return cycle
    return None


def test_top_level_packages_import_each_other_without_a_cycle() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    where = [f"{a} -> {b} at {graph[a][b]}" for a, b in itertools.pairwise(cycle)] if cycle else []
    assert cycle is None, "import cycle: " + "; ".join(where)


def test_the_layers_are_the_ones_the_readme_names() -> None:
    # Each package may import only those after it: scribes → api_shim → workers → tasks → rag.
    graph = import_graph()
    for index, package in enumerate(PACKAGES):
        allowed = set(PACKAGES[index + 1 :])
        wrong = {target: where for target, where in graph[package].items() if target not in allowed}
        assert not wrong, f"{package} imports a layer above it: {wrong}"
    assert graph["rag"] == {}


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b": "x"}, "b": {"c": "y"}, "c": {"a": "z"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": "x"}, "b": {}}) is None
