"""Imports point down the layers of CONTRIBUTING.md: no upward import, no import cycle, no private names.

Read with ``ast`` over the package (function-level imports included), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

# Lowest first. A module may import from its own layer or any layer below, never from above.
LAYERS = [
    {"errors", "io", "progress", "inputs", "results"},
    {"models", "stimuli", "kernels", "viz", "scores"},
    {"patterns", "atlas", "tasks", "report", "executors"},
    {"detectors", "interventions", "scanning"},
    {"retrieval", "episodic", "sweeps", "toy", "knowledge", "model_check", "comparison", "replicates"},
    {"cli", "widgets", "__main__"},
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path):
    """(target module, imported name or None) for every workbench import in the file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "workbench":
                for alias in node.names:
                    yield target, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "workbench":
                    yield alias.name, None


def _resolve(target: str, name: str | None, modules: set[str]) -> str:
    """The module an import really reads: ``from pkg import sub`` is the submodule ``pkg.sub``."""
    if name and f"{target}.{name}" in modules:
        return f"{target}.{name}"
    return target


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
EDGES = [(m, _resolve(t, n, set(MODULES)), n) for m, p in MODULES.items() for t, n in _imports(p)]


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_top_level_module_has_a_layer():
    tops = {_top(m) for m in MODULES} - {""}
    assert tops <= set(RANK), f"put these in LAYERS (and CONTRIBUTING.md): {sorted(tops - set(RANK))}"


def test_imports_point_down():
    upward = sorted({f"{m} -> {t}" for m, t, _ in EDGES
                     if _top(t) and _top(m) and RANK[_top(t)] > RANK[_top(m)]})
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_private_names_across_modules():
    private = sorted({f"{m} imports {t}.{n}" for m, t, n in EDGES
                      if n and n.startswith("_") and not n.startswith("__") and t != m})
    assert not private, "make these public in the lower module:\n" + "\n".join(private)


def test_no_import_cycles_between_packages():
    graph = nx.DiGraph((_top(m), _top(t)) for m, t, _ in EDGES if _top(m) and _top(t) and _top(m) != _top(t))
    cycles = list(nx.simple_cycles(graph))
    assert not cycles, f"packages importing each other: {cycles}"


@pytest.mark.parametrize("package", sorted({m.rsplit(".", 1)[0] for m in MODULES if m.count(".") >= 2}))
def test_no_import_cycles_between_modules(package):
    """Within a package, submodules do not import each other in a circle (a package __init__ re-exporting is fine)."""
    inside = [(m, t) for m, t, _ in EDGES
              if m.startswith(package + ".") and t.startswith(package + ".") and m != t]
    cycles = list(nx.simple_cycles(nx.DiGraph(inside)))
    assert not cycles, f"modules of {package} importing each other: {cycles}"
