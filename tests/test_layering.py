"""The pipeline is the architecture: module-level imports form no cycle, and each layer imports only
the layers before it (spec -> ir -> passes -> codegen -> schedules -> compiler -> runtime; autotune
never imports runtime; codegen and schedules never read the Spec)."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

import attncc

ROOT = Path(attncc.__file__).resolve().parent


def _module(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """attncc modules imported by ``path`` (top-level statements only, or anywhere; never TYPE_CHECKING)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("attncc"))
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("attncc"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            if not top_level_only or isinstance(node, (ast.If, ast.Try)):
                for field in ("body", "orelse", "handlers", "finalbody"):
                    inner = getattr(node, field, None)
                    if isinstance(inner, list):
                        visit([n for n in inner if isinstance(n, ast.stmt)] +
                              [s for h in inner if isinstance(h, ast.ExceptHandler) for s in h.body])
    visit(tree.body)
    return found


MODULES = {_module(p): p for p in ROOT.rglob("*.py")}


def test_module_level_imports_have_no_cycle() -> None:
    g = nx.DiGraph()
    for name, path in MODULES.items():
        g.add_node(name)
        for target in _imports(path, top_level_only=True):
            if target in MODULES and target != name:
                g.add_edge(name, target)
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import cycles: {cycles[:5]}"


FORBIDDEN = {
    "attncc.autotune": ("attncc.runtime", "attncc.compiler", "attncc.cli"),
    "attncc.codegen": ("attncc.runtime", "attncc.autotune", "attncc.schedules", "attncc.compiler", "attncc.spec.model"),
    "attncc.schedules": ("attncc.runtime", "attncc.compiler", "attncc.spec.model", "attncc.autotune"),
    "attncc.passes": ("attncc.codegen", "attncc.schedules", "attncc.runtime", "attncc.autotune", "attncc.compiler"),
    "attncc.ir": ("attncc.passes", "attncc.codegen", "attncc.schedules", "attncc.runtime", "attncc.autotune"),
}


@pytest.mark.parametrize("layer", [pytest.param(k, id=k) for k in FORBIDDEN])
def test_layers_import_only_earlier_layers(layer: str) -> None:
    bad = []
    for name, path in MODULES.items():
        if name != layer and not name.startswith(layer + "."):
            continue
        for target in _imports(path, top_level_only=False):
            if any(target == f or target.startswith(f + ".") for f in FORBIDDEN[layer]):
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_cycle_even_through_imports_inside_functions() -> None:
    """Deferred imports may not hide a cycle either (the runtime's api and ops once imported each
    other that way).  Known exception: autotune.storage.optuna_storage opens a TuningCache."""
    g = nx.DiGraph()
    for name, path in MODULES.items():
        for target in _imports(path, top_level_only=False):
            if target in MODULES and target != name:
                g.add_edge(name, target)
    g.remove_edge("attncc.autotune.storage", "attncc.autotune.cache")
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import cycles through deferred imports: {cycles[:5]}"
