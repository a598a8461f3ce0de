"""The dependency direction README's "Layout" section draws, checked on the source: no import circle (imports inside
functions and under ``TYPE_CHECKING`` included), each layer imports only its own or lower layers, and no module is
imported by a name computed at run time except through the drivers' entry points."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.fast  # the fast tier: no root, seconds (pytest -m fast)

REPO = Path(__file__).resolve().parents[2]
# Folder at the top of the repository -> the package it installs as (pyproject's package-dir).
PACKAGES = {"machines": "machines", "drivers": "machines.drivers", "bootstrap": "machines.bootstrap",
            "runtime": "machines.runtime"}

# Lowest first; README's diagram, top to bottom, is this list reversed. A module belongs to the first entry that is
# its name or a package above it (a new module of machines/ must be placed here by name).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("runtime", ("machines.runtime",)),
    ("leaf", ("machines.errors", "machines.store", "machines.hostoptions", "machines.hostkeys", "machines.progress",
              "machines.shellenv", "machines.redaction", "machines.contexts", "machines.detached")),
    ("drivers", ("machines.drivers",)),
    ("core", ("machines.machine", "machines.ssh", "machines.inventory", "machines.transfer", "machines.mounts",
              "machines.declarative", "machines.dockermachine", "machines.swarm")),
    ("bootstrap", ("machines.bootstrap",)),
    ("application", ("machines.default", "machines.cli", "machines.__main__", "machines", "machines.ports",
                     "machines.sshconfig", "machines.completion", "machines.share", "machines.reversefs",
                     "machines.trust", "machines.scan")),
]
# What may use the runtime's code (runtime itself is stdlib only): the zipapp builder, which bundles the package, the
# provisioner, which checks engine options with the daemon's own rules before anything is created, and the
# workstation's image tools, which reuse its registry client, trust policy and scanner so that `machines trust verify`
# and `machines scan` judge exactly as a machine does.
RUNTIME_USERS = {"machines.bootstrap.bundle": None, "machines.bootstrap.provisioner": {"machines.runtime.daemonconfig"},
                 "machines.trust.sigstore": {"machines.runtime.errors", "machines.runtime.images.ecdsa", "machines.runtime.images.media",
                                             "machines.runtime.images.reference", "machines.runtime.images.registry",
                                             "machines.runtime.images.signing", "machines.runtime.images.trust"},
                 "machines.trust.gpgsign": {"machines.runtime.images.sigext", "machines.runtime.images.signing",
                                            "machines.runtime.images.simplesign",
                                            "machines.runtime.images.trust"},
                 "machines.trust.policy": {"machines.runtime.errors", "machines.runtime.images.signing",
                                           "machines.runtime.images.trust"},
                 "machines.scan.source": {"machines.runtime.images.media", "machines.runtime.images.registry"},
                 "machines.scan.scan": {"machines.runtime.images.scan.inventory", "machines.runtime.images.scan.osv"},
                 "machines.scan.report": {"machines.runtime.images.scan.inventory", "machines.runtime.images.scan.osv"}}
STRING_IMPORTS = ("import_module", "__import__", "find_spec", "spec_from_file_location")


def _module_name(path: Path) -> str:
    folder, *parts = path.relative_to(REPO).with_suffix("").parts
    if parts and parts[-1] == "__init__":
        parts.pop()
    return ".".join([PACKAGES[folder], *parts])


def _folder(module: str) -> str:
    """The package of the top-level folder a module lives in: machines, machines.drivers, ..."""
    return max((name for name in PACKAGES.values() if module == name or module.startswith(f"{name}.")), key=len)


def _sources() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def _imported(name: str, path: Path, tree: ast.AST, modules: set[str]) -> set[str]:
    """Project modules imported anywhere in the module (top level, functions, TYPE_CHECKING blocks)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from a import b`` imports the module ``a.b`` when there is one, else a name of ``a``. (Parent
            # packages that Python initialises on the way are not edges, for ``import a.b`` neither.)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # the longest project module the import names
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    modules = set(sources)
    return {name: _imported(name, path, ast.parse(path.read_text(), str(path)), modules) for name, path in sources.items()}


def _layer(module: str) -> int:
    for index, (_, names) in enumerate(LAYERS):
        # A name covers its submodules, except "machines": its modules are in the layers named one by one.
        if any(module == name or (name != "machines" and module.startswith(f"{name}.")) for name in names):
            return index
    raise AssertionError(f"{module} is in no layer of the test (and of README's diagram): add it")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), as a sorted list of names."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return _graph()


@pytest.mark.parametrize("package", ["machines", "machines.drivers", "machines.bootstrap"])
def test_no_import_circle(graph: dict[str, set[str]], package: str) -> None:
    inside = {name: {t for t in targets if _layer(t) > 0} for name, targets in graph.items() if _layer(name) > 0}
    circles = [cycle for cycle in _cycles(inside) if any(_folder(m) == package for m in cycle)]
    assert circles == []


def test_each_layer_imports_only_its_own_or_lower_layers(graph: dict[str, set[str]]) -> None:
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(name)
    )
    assert upward == []


def test_the_core_reaches_neither_bootstrap_nor_the_cli(graph: dict[str, set[str]]) -> None:
    core = [name for name in graph if LAYERS[_layer(name)][0] in ("leaf", "drivers", "core")]
    reached: set[str] = set()
    pending = list(core)
    while pending:
        for target in graph[pending.pop()] - reached:
            reached.add(target)
            pending.append(target)
    assert sorted(m for m in reached if m.startswith(("machines.bootstrap", "machines.cli")) or m == "machines.default") == []


def test_only_the_bundler_uses_the_runtime_and_the_runtime_uses_nothing_of_ours(graph: dict[str, set[str]]) -> None:
    users = {name: {t for t in targets if _layer(t) == 0} for name, targets in graph.items() if _layer(name) > 0}
    users = {name: used for name, used in users.items() if used}
    assert set(users) <= set(RUNTIME_USERS)
    assert all(RUNTIME_USERS[name] is None or used <= RUNTIME_USERS[name] for name, used in users.items())
    assert sorted(f"{n} -> {t}" for n, targets in graph.items() if _layer(n) == 0 for t in targets if _layer(t) > 0) == []


def test_no_import_by_a_computed_name() -> None:
    """Only ``machines.drivers.registry`` loads code by name, through the ``machines.drivers`` entry points."""
    offenders = []
    for name, path in _sources().items():
        if _folder(name) == "machines.runtime":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                function = node.func
                called = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
                if called in STRING_IMPORTS:
                    offenders.append(f"{name}:{node.lineno} {called}")
    assert offenders == []


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The graph builder itself: an import inside a function and a relative import are edges."""
    source = "def f():\n    from . import common, main\n    import machines.progress\n    from .. import store\n"
    modules = {"machines.cli.common", "machines.cli", "machines.progress", "machines", "machines.store"}
    found = _imported("machines.cli.thing", tmp_path / "thing.py", ast.parse(source), modules)
    assert found == {"machines.cli.common", "machines.cli", "machines.progress", "machines.store"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_of_ours_names_the_one_namespace() -> None:
    """``import runtime`` or ``from drivers import x`` would load the index's unrelated packages of those names."""
    foreign = []
    for name, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            foreign += [f"{name}:{node.lineno} {n}" for n in names if n.split(".")[0] in ("drivers", "bootstrap", "runtime")]
    assert foreign == []
