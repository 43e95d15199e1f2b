"""geosane's modules form layers: no import cycle, and no stage imports one above it.

Every module under ``src/geosane`` is parsed (``ast``, nothing is imported) and every ``import`` /
``from ... import`` counts, at any nesting: inside functions (lazy imports are still
dependencies, they only move the failure to run time) and inside ``if TYPE_CHECKING:`` blocks
(an annotation that names a module is a dependency on it; a type-only cycle is still a cycle that
the next refactor turns into a real one, and the lazy-export ``__init__`` files only point down
at their own submodules, so counting them costs nothing).

``from pkg import name`` is an edge to the module ``pkg.name`` when that is a module, else to
``pkg``; importing a submodule is not counted as importing its package's ``__init__`` (that only
runs the package's lazy-export table).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO_ROOT

SRC = REPO_ROOT / "src"

# Low to high. A module may import from its own stage and from stages on lower floors only;
# stages sharing a floor are siblings and must not import each other. ``(root)`` is
# ``geosane/__init__``: importable only for ``__version__``. ``__main__`` (``python -m geosane``,
# two lines calling the CLI) sits just above ``cli``.
FLOORS: list[tuple[str, ...]] = [
    ("errors", "_lazy", "(root)"),
    ("io",),
    ("runs", "console", "config"),
    ("data", "arch"),
    ("tasks",),
    ("zoo",),
    ("tokens", "analysis", "difuser"),
    ("autoencoder",),
    ("generation",),
    ("downstream",),
    ("benchmark",),
    ("demo",),
    ("cli",),
    ("__main__",),
]
FLOOR = {stage: level for level, stages in enumerate(FLOORS) for stage in stages}

# Existing edges that break the rules above, as (importing module, imported module). The lead
# shrinks this list; a new violation fails the test.
KNOWN: set[tuple[str, str]] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted((SRC / "geosane").rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[tuple[str, tuple[str, ...]]]:
    """``(imported module, names)`` for every geosane import of one module, at any nesting."""
    found: set[tuple[str, tuple[str, ...]]] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update((a.name, ()) for a in node.names if a.name.split(".")[0] == "geosane")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "geosane":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add((sub, ()) if sub in known else (target, (alias.name,)))
    return found


def import_graph() -> dict[str, dict[str, set[str]]]:
    """``{module: {imported module: names imported from it}}`` over src/geosane."""
    modules = _modules()
    graph: dict[str, dict[str, set[str]]] = {m: defaultdict(set) for m in modules}
    for name, path in modules.items():
        for target, names in _imports(name, path, set(modules)):
            graph[name][target].update(names)
    return graph


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a self-import), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan; the graph has a few hundred nodes, recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph[node]:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def layer_violations(graph: dict[str, dict[str, set[str]]]) -> set[tuple[str, str]]:
    """``(importer, imported)`` edges that go up a floor, across a floor, or into the root."""
    bad = set()
    for module, targets in graph.items():
        for target, names in targets.items():
            here, there = stage(module), stage(target)
            if here == there:
                continue
            if there == "(root)":
                if not names or not names <= {"__version__"}:
                    bad.add((module, target))
            elif FLOOR[here] <= FLOOR[there]:
                bad.add((module, target))
    return bad


def test_every_stage_has_a_floor() -> None:
    stages = {stage(m) for m in _modules()}
    assert stages - set(FLOOR) == set(), "place the new stage in FLOORS"


def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_stage_imports_one_above_or_beside_it() -> None:
    new = sorted(layer_violations(import_graph()) - KNOWN)
    shown = "\n".join(f"{a} -> {b}" for a, b in new)
    assert new == [], f"imports that break FLOORS (a lazy import is no fix; move the shared code down):\n{shown}"


def test_known_violations_still_exist() -> None:
    """A fixed violation leaves the allowlist, so it cannot come back unnoticed."""
    assert KNOWN - layer_violations(import_graph()) == set()


def test_the_checks_catch_cycles_and_upward_imports() -> None:
    graph: dict[str, dict[str, set[str]]] = {
        "geosane.tasks.models": {"geosane.zoo.sources": {"ArchSpec"}},
        "geosane.zoo.sources": {"geosane.zoo.manifest": {"Zoo"}, "geosane.tasks.models": set()},
        "geosane.zoo.manifest": {"geosane.zoo.sources": {"ArchSpec"}, "geosane": {"__version__"}},
        "geosane.tokens.store": {"geosane.analysis.cka": set(), "geosane": {"__version__", "x"}},
    }
    assert cycles(graph) == [["geosane.tasks.models", "geosane.zoo.manifest", "geosane.zoo.sources"]]
    assert layer_violations(graph) == {
        ("geosane.tasks.models", "geosane.zoo.sources"),
        ("geosane.tokens.store", "geosane.analysis.cka"),
        ("geosane.tokens.store", "geosane"),
    }
