"""Layering of the segkit package, read from its source with ``ast`` (nothing is imported).

The rules: no library module imports a command module (``segkit.cli`` and below; only
``segkit/__main__.py`` may), the modules import each other without a cycle, and
``segkit/weights.py`` imports nothing from segkit.

An edge ``a -> b`` is an import in ``a``'s source of segkit module ``b``, wherever it sits (module
level, a function body, ``if TYPE_CHECKING:``): ``import segkit.x.y`` and ``from segkit.x import
y`` name ``segkit.x.y`` when that is a module, else ``segkit.x``; relative imports are resolved,
and ``importlib.import_module("segkit....")`` with a literal name counts too. A package is the
module of its ``__init__.py``. Importing ``segkit.x.y`` also runs package ``segkit.x``, so that is
an edge as well unless ``segkit.x`` contains ``a`` (its own packages are running already): a
package's ``__init__`` importing its own submodules is normal, a submodule importing its
package's ``__init__`` back is a cycle.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

SEGKIT = Path(__file__).resolve().parents[1] / "segkit"


@dataclass
class ImportGraph:
    """The modules of a package and the imports between them.

    ``modules`` maps a dotted name to its file (``None`` for a namespace package, which has no
    code); ``edges[a][b]`` says where ``a`` imports ``b`` first (``"path:line"``);
    ``unresolved`` lists imports of package modules that do not exist.
    """

    package: str
    modules: dict[str, Path | None]
    edges: dict[str, dict[str, str]]
    unresolved: list[str]


def discover_modules(package_dir: Path) -> dict[str, Path | None]:
    """Every module under ``package_dir`` by dotted name, its namespace packages included."""
    modules: dict[str, Path | None] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        if not all(part.isidentifier() for part in parts):
            continue  # not importable (a data folder, a script named with dashes)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    for name in list(modules):
        for parent in _ancestors(name):
            modules.setdefault(parent, None)
    return modules


def _ancestors(name: str) -> list[str]:
    """``"a.b.c"`` -> ``["a", "a.b"]``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def _from_base(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The absolute module named by ``from X import ...`` in ``module``; None past the top."""
    if node.level == 0:
        return node.module
    parts = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 >= len(parts):
        return None
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join([*parts, node.module] if node.module else parts)


def _named_modules(
    node: ast.AST, module: str, is_package: bool, modules: Mapping[str, Path | None]
) -> Iterator[str]:
    """The absolute names that one AST node imports (any package; checked by the caller)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        base = _from_base(node, module, is_package)
        if base is None:
            yield "." * node.level + (node.module or "")  # beyond the top: unresolvable
            return
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            yield candidate if candidate in modules else base
    elif isinstance(node, ast.Call) and node.args:
        func, first = node.func, node.args[0]
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
        if name in ("import_module", "__import__") and literal and len(node.args) == 1:
            yield first.value


def build_graph(package_dir: Path) -> ImportGraph:
    """Walk every module's source under ``package_dir`` and collect the package's import edges."""
    package = package_dir.name
    modules = discover_modules(package_dir)
    edges: dict[str, dict[str, str]] = {name: {} for name, path in modules.items() if path}
    unresolved: list[str] = []
    for module, path in modules.items():
        if path is None:
            continue
        is_package = path.name == "__init__.py"
        running = {module, *_ancestors(module)}  # packages already executing when module runs
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        nodes = [n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom | ast.Call)]
        for node in sorted(nodes, key=lambda n: (n.lineno, n.col_offset)):
            where = f"{path.relative_to(package_dir.parent)}:{node.lineno}"
            for target in _named_modules(node, module, is_package, modules):
                if target.startswith("."):
                    unresolved.append(f"{where}: relative import {target} beyond {package}")
                    continue
                if not _within(target, package):
                    continue
                if target not in modules:
                    unresolved.append(f"{where}: {target}")
                    continue
                found = {target: where}
                for parent in _ancestors(target):
                    if parent not in running:
                        found.setdefault(parent, f"{where}, package of {target}")
                for name, place in found.items():
                    if name != module and modules[name] is not None:
                        edges[module].setdefault(name, place)
    return ImportGraph(package, modules, edges, unresolved)


def _reachable(adjacency: Mapping[str, list[str]], start: str) -> set[str]:
    """Nodes reachable from ``start`` by one edge or more (``start`` only if on a cycle)."""
    seen: set[str] = set()
    queue = deque(adjacency[start])
    while queue:
        node = queue.popleft()
        if node not in seen:
            seen.add(node)
            queue.extend(adjacency[node])
    return seen


def _shortest_cycle(adjacency: Mapping[str, list[str]], start: str, within: set[str]) -> list[str]:
    """A shortest cycle ``[start, ..., start]`` through nodes of ``within``."""
    parents: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in adjacency[node]:
            if target == start:
                chain = [node]
                while chain[-1] != start:
                    chain.append(parents[chain[-1]])
                return [*reversed(chain), start]
            if target in within and target not in parents:
                parents[target] = node
                queue.append(target)
    raise AssertionError(f"{start} is on no cycle within {sorted(within)}")


def find_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component that has one, as ``[a, ..., a]``.

    Each starts at its component's smallest node; the list is sorted. Empty when acyclic.
    """
    adjacency = {node: sorted(set(targets)) for node, targets in graph.items()}
    for targets in list(adjacency.values()):
        for target in targets:
            adjacency.setdefault(target, [])
    reach = {node: _reachable(adjacency, node) for node in adjacency}
    cycles: list[list[str]] = []
    done: set[str] = set()
    for node in sorted(adjacency):
        if node in done or node not in reach[node]:
            continue
        component = {other for other in reach[node] if node in reach[other]}
        done |= component
        cycles.append(_shortest_cycle(adjacency, node, component))
    return cycles


def command_imports(graph: ImportGraph) -> list[str]:
    """Edges from a library module (not the command package, not ``__main__``) to a command."""
    commands = f"{graph.package}.cli"
    return [
        f"{source} -> {target} ({where})"
        for source, targets in sorted(graph.edges.items())
        if not _within(source, commands) and source != f"{graph.package}.__main__"
        for target, where in sorted(targets.items())
        if _within(target, commands)
    ]


def describe_cycles(graph: ImportGraph) -> list[str]:
    """Each import cycle as ``a -> b (where a imports b) -> ... -> a (...)``."""
    lines = []
    for cycle in find_cycles(graph.edges):
        hops = [f"{b} ({graph.edges[a][b]})" for a, b in pairwise(cycle)]
        lines.append(" -> ".join([cycle[0], *hops]))
    return lines


# --- the rules on segkit itself ---------------------------------------------------------------


@pytest.fixture(scope="module")
def segkit_graph() -> ImportGraph:
    assert (SEGKIT / "__init__.py").is_file(), SEGKIT
    return build_graph(SEGKIT)


def test_walk_sees_every_module_and_resolves_every_import(segkit_graph: ImportGraph) -> None:
    files = [p for p in SEGKIT.rglob("*.py") if "__pycache__" not in p.parts]
    assert sorted(p for p in segkit_graph.modules.values() if p) == sorted(files)
    assert not segkit_graph.unresolved, "\n".join(segkit_graph.unresolved)
    # Imports that the layering requires, seen by the walk (so the checks below are not vacuous).
    assert "segkit.cli" in segkit_graph.edges["segkit.__main__"]
    assert "segkit.models" in segkit_graph.edges["segkit"]


def test_no_library_module_imports_a_command_module(segkit_graph: ImportGraph) -> None:
    found = command_imports(segkit_graph)
    assert not found, "library modules importing segkit.cli:\n" + "\n".join(found)


def test_no_import_cycle(segkit_graph: ImportGraph) -> None:
    found = describe_cycles(segkit_graph)
    assert not found, "import cycles:\n" + "\n".join(found)


def test_weights_imports_nothing_from_segkit(segkit_graph: ImportGraph) -> None:
    found = [f"{t} ({where})" for t, where in sorted(segkit_graph.edges["segkit.weights"].items())]
    assert not found, "segkit/weights.py imports from segkit:\n" + "\n".join(found)


# --- the checker itself, on hand-made graphs and a planted package ------------------------------


@pytest.mark.parametrize(
    ("graph", "cycles"),
    [
        ({}, []),
        ({"a": ["b", "c"], "b": ["d"], "c": ["d"], "d": []}, []),  # a diamond is no cycle
        ({"a": ["b"], "b": ["c"], "c": ["a"]}, [["a", "b", "c", "a"]]),
        ({"x": ["a"], "a": ["b"], "b": ["a", "y"]}, [["a", "b", "a"]]),  # tail in and out
        ({"a": ["a"]}, [["a", "a"]]),
        (
            {"p": ["q"], "q": ["p"], "a": ["b"], "b": ["c"], "c": ["a"]},
            [["a", "b", "c", "a"], ["p", "q", "p"]],
        ),
        # One component, two loops through "a": the shortest cycle is reported.
        ({"a": ["b", "d"], "b": ["c"], "c": ["a"], "d": ["a"]}, [["a", "d", "a"]]),
        ({"b": ["c"], "c": ["d"], "d": ["b"], "a": ["b"]}, [["b", "c", "d", "b"]]),
    ],
)
def test_find_cycles_on_hand_made_graphs(
    graph: dict[str, list[str]], cycles: list[list[str]]
) -> None:
    assert find_cycles(graph) == cycles


PLANTED = {
    "__init__.py": "from segkit.models import create_model\nfrom . import weights\n",
    "__main__.py": "from segkit.cli import main\n",  # allowed: the entry point
    "cli/__init__.py": (
        "import importlib\n\n\ndef main():\n    from segkit import __version__\n\n"
        "    return importlib.import_module('segkit.cli.train')\n"
    ),
    "cli/train.py": "from segkit.engine import train\nfrom ..models import layers\n",
    "models/__init__.py": "from .layers import conv\nfrom segkit.checkpoint import load\n",
    "models/layers.py": "import torch\n\nconv = torch.nn.Conv2d\n",
    # Planted cycle, hidden in a function: models -> checkpoint -> models.
    "checkpoint.py": "def load():\n    from segkit.models import create_model\n",
    "engine/__init__.py": "",
    # Planted: a library module imports a command, relatively; closes cli -> ... -> cli.
    "engine/train.py": "from ..cli import train as command\n",
    # Planted, in a namespace package (no __init__.py) by a literal dynamic import.
    "deploy/bench.py": (
        "import importlib\n\n\ndef run():\n    importlib.import_module('segkit.cli')\n"
    ),
    # Planted: weights imports from segkit.
    "weights.py": "import torch\n\n\ndef read():\n    from .files import MODE\n",
    "files.py": "MODE = 0o644\n",
    "data/__init__.py": "from segkit.data.io import read\n",
    "data/io.py": (
        "import os.path\nimport segkit.files\n\n\ndef read():\n"
        "    from segkit.missing import thing\n"
    ),
}


@pytest.fixture
def planted_graph(tmp_path: Path) -> ImportGraph:
    for name, text in PLANTED.items():
        path = tmp_path / "segkit" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return build_graph(tmp_path / "segkit")


def test_planted_package_edges(planted_graph: ImportGraph) -> None:
    edges = {source: set(targets) for source, targets in planted_graph.edges.items() if targets}
    assert edges == {
        "segkit": {"segkit.models", "segkit.weights"},
        "segkit.__main__": {"segkit.cli"},
        "segkit.cli": {"segkit", "segkit.cli.train"},
        # engine.train, and package engine that it runs; models.layers, and package models.
        "segkit.cli.train": {
            "segkit.engine",
            "segkit.engine.train",
            "segkit.models",
            "segkit.models.layers",
        },
        "segkit.models": {"segkit.models.layers", "segkit.checkpoint"},
        "segkit.checkpoint": {"segkit.models"},
        "segkit.engine.train": {"segkit.cli", "segkit.cli.train"},
        "segkit.deploy.bench": {"segkit.cli"},
        "segkit.weights": {"segkit.files"},
        "segkit.data": {"segkit.data.io"},
        "segkit.data.io": {"segkit.files"},
    }
    assert planted_graph.modules["segkit.deploy"] is None  # namespace package, no code
    assert planted_graph.edges["segkit.checkpoint"]["segkit.models"] == "segkit/checkpoint.py:2"
    assert planted_graph.unresolved == ["segkit/data/io.py:6: segkit.missing"]


def test_planted_faults_are_reported(planted_graph: ImportGraph) -> None:
    assert command_imports(planted_graph) == [
        "segkit.deploy.bench -> segkit.cli (segkit/deploy/bench.py:5)",
        "segkit.engine.train -> segkit.cli (segkit/engine/train.py:1, package of segkit.cli.train)",
        "segkit.engine.train -> segkit.cli.train (segkit/engine/train.py:1)",
    ]
    assert describe_cycles(planted_graph) == [
        "segkit.checkpoint -> segkit.models (segkit/checkpoint.py:2)"
        " -> segkit.checkpoint (segkit/models/__init__.py:2)",
        "segkit.cli -> segkit.cli.train (segkit/cli/__init__.py:7)"
        " -> segkit.engine.train (segkit/cli/train.py:1)"
        " -> segkit.cli (segkit/engine/train.py:1, package of segkit.cli.train)",
    ]
    assert set(planted_graph.edges["segkit.weights"]) == {"segkit.files"}
