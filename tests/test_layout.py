"""The package's shape: no module imports in a circle, a lower layer never imports a higher one, every
package says in its docstring what lives there. Imports inside functions count: they are dependencies too."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "service"

# Lowest first. A module may import its own layer (without a circle) and the layers below it.
LAYERS = [
    {"service.config", "service.errors", "service.extensions", "service.logs", "service.models", "service.tokens"},
    {"service.publishing"},
    {"service.mail"},
    {"service.readers"},
    {"service.digests"},
    {"service.web", "service.studio"},
    {"service.tasks", "service.commands"},
    {"service"},  # the app factory registers everything
    {"service.cli", "service.devserver", "service.deploy"},  # entry points over the factory
]


def module_name(path: Path) -> str:
    parts = ["service", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in ROOT.rglob("*.py") if "migrations" not in path.parts}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every service module `name` imports, at the top or inside a function."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("service"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if not base.startswith("service"):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports_of(name, path, known) & known for name, path in found.items()}


def layer(name: str) -> int:
    for index, members in enumerate(LAYERS):
        if any(name == member or name.startswith(member + ".") for member in members if member != "service"):
            return index
    if name == "service":
        return next(index for index, members in enumerate(LAYERS) if "service" in members)
    raise AssertionError(f"{name} belongs to no layer: add its package to LAYERS")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_is_read_from_the_source():
    edges = graph()
    assert "service.digests.runs" in edges["service.tasks"]
    assert "service.publishing.publication" in edges["service.publishing.posts"]
    assert "service.mail.outbox" in edges["service.readers.subscriptions"]


def test_no_module_imports_in_a_circle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_a_lower_layer_never_imports_a_higher_one():
    upward = sorted(f"{source} -> {target}" for source, targets in graph().items() for target in targets
                    if layer(target) > layer(source))
    assert upward == []


@pytest.mark.parametrize("package", sorted(path.parent.name for path in ROOT.glob("*/__init__.py")))
def test_every_package_says_what_lives_there(package):
    docstring = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert docstring and "\n" not in docstring.strip()
