"""The images package is a tree: no module imports another that imports it back (lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

IMAGES = Path(__file__).resolve().parents[2] / "runtime" / "images"


def _imports(path: Path) -> set:
    """Every machines.runtime.images module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "machines.runtime.images":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("machines.runtime.images."):
                found.add(node.module.split(".")[3])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[3] for a in node.names if a.name.startswith("machines.runtime.images.")}
    return found


def test_images_modules_import_no_circle():
    graph = {p.stem: _imports(p) - {p.stem} for p in IMAGES.glob("*.py") if p.stem != "__init__"}
    state: dict = {}

    def visit(name, path):
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", "import circle: " + " -> ".join(path + [name])
        state[name] = "open"
        for child in sorted(graph.get(name, ())):
            visit(child, path + [name])
        state[name] = "done"

    for name in sorted(graph):
        visit(name, [])
    assert graph["media"] == set(), "media must stay a leaf"
    assert not graph["store"] & {"registry", "builder", "service", "transfer"}, "the store sits below its users"
