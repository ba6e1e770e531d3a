"""The package's layering, read from the source with ``ast`` (every import: top level, inside functions,
under ``TYPE_CHECKING``).

Layers, lowest first: core → methods → families → engine → runtimes → tools → cli. A module imports only from its
own layer or lower ones, no module is part of an import cycle, no private name (leading underscore)
crosses from one top-level subpackage to another, nothing under ``src/hired`` imports :mod:`hired.testing`,
and argparse, ``CommandError``, ``sys.exit`` and ``SystemExit`` live only in :mod:`hired.cli`.

A module that is in none of the layers below fails :func:`test_every_module_has_a_layer`: add it to
``LAYERS``. The checks are plain functions of an import graph; the ``test_check_*`` tests at the end feed
them a small bad graph, so each one is shown to fail when it should.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

LAYERS: dict[str, tuple[str, ...]] = {
    # name → the modules in it; a name ending in ".*" is a package and every module under it
    "core": ("hired.core.*", "hired.selection", "hired.images", "hired.machine"),
    "methods": ("hired.methods.*",),
    "families": ("hired.families.*",),
    "engine": ("hired.engine.*",),
    "runtimes": (
        "hired",  # hired/__init__.py: apply, remove, prepare_inputs, ...
        "hired.adapters.*",
        "hired.vllm",
        "hired.vllm.config",
        "hired.vllm.common",
        "hired.vllm.partitions",
        "hired.vllm.llava",
        "hired.vllm.llava_next",
        "hired.vllm.onevision",
        "hired.vllm.merged_grid",
        "hired.vllm.qwen2_5_vl",
        "hired.vllm.qwen3_vl",
        "hired.vllm.qwen3_5",
        "hired.vllm.internvl",
        "hired.loading",
        "hired.builders",
    ),
    "tools": (
        "hired.bench.*",
        "hired.eval.*",
        "hired.viz.*",
        "hired.models.*",
        "hired.vllm.bench",
        "hired.vllm.checkpoint",
        "hired.inference",
        "hired.testing",
    ),
    "cli": ("hired.cli.*",),
}
ORDER = list(LAYERS)

UPWARD_ALLOWED: dict[tuple[str, str], str] = {
    # (importer, imported): why a lower layer imports a higher one here, for now ("engine work in
    # progress" while the runtime is restructured). Empty: hired.families.qwen2_5_vl -> hired.adapters.qwen
    # and hired.vllm (then models.py) -> hired.bench.timing are gone.
}
PRIVATE_ALLOWED: dict[tuple[str, str], str] = {
    # (importer, imported.name): a private name that crosses top-level subpackages, for now
}
COMMAND_LINE_ALLOWED: dict[str, str] = {
    # module: why it may use argparse / sys.exit / SystemExit outside hired.cli
    "hired.models.train": "its documented `python -m hired.models.train` command",
}


# ------------------------------------------------------------------------------------------ reading the source


@dataclass(frozen=True)
class Import:
    importer: str
    module: str  # the imported module (a name imported from a package resolves to its submodule)
    name: str | None  # the name imported from ``module`` (``from module import name``), if any
    line: int


def modules(root: Path = SRC) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under ``root/hired``."""
    out = {}
    for path in sorted((root / "hired").rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """Every import of a ``hired`` module in ``path`` (module ``name``), wherever it is in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if _is_package(path) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [Import(name, a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "hired"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "hired":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:  # ``from hired.models import dense``: the module hired.models.dense
                    out.append(Import(name, sub, None, node.lineno))
                else:
                    out.append(Import(name, target, alias.name, node.lineno))
    return out


def all_imports(root: Path = SRC) -> list[Import]:
    found = modules(root)
    return [imp for name, path in found.items() for imp in imports_of(name, path, set(found))]


# ------------------------------------------------------------------------------------------ the checks


def layer_of(module: str, layers: dict[str, tuple[str, ...]] = LAYERS) -> str | None:
    """The layer of ``module``: an exact entry wins over a package entry, the longest package entry wins."""
    best, best_len = None, -1
    for layer, entries in layers.items():
        for entry in entries:
            if entry == module:
                return layer
            if entry.endswith(".*"):
                pkg = entry[:-2]
                if (module == pkg or module.startswith(pkg + ".")) and len(pkg) > best_len:
                    best, best_len = layer, len(pkg)
    return best


def unmapped(names, layers=LAYERS) -> list[str]:
    return sorted(m for m in names if layer_of(m, layers) is None)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of ``edges`` (importer → imported), one per strongly connected component
    (Tarjan), each as a closed path ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursion depth: the number of modules (a few hundred at most)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in edges.get(v, ()):
                components.append(comp)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [_closed_path(sorted(comp)[0], set(comp), edges) for comp in components]


def _closed_path(start: str, comp: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path from ``start`` back to itself inside one strongly connected component."""
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(edges.get(v, ())):
                if w not in comp:
                    continue
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [*reversed(path), start]
                if w not in previous:
                    previous[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start]


def edges_of(imports: list[Import]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for imp in imports:
        if imp.module != imp.importer:
            out.setdefault(imp.importer, set()).add(imp.module)
    return out


def upward(imports: list[Import], layers=LAYERS, allowed=UPWARD_ALLOWED) -> list[str]:
    """Imports from a higher layer into a lower one that are not in ``allowed``."""
    out = set()
    for imp in imports:
        a, b = layer_of(imp.importer, layers), layer_of(imp.module, layers)
        if a is None or b is None or (imp.importer, imp.module) in allowed:
            continue
        if ORDER.index(b) > ORDER.index(a):
            out.add(f"{imp.importer} ({a}) imports {imp.module} ({b}), line {imp.line}")
    return sorted(out)


def _top(module: str) -> str:
    """The top-level subpackage (or module) of ``hired`` a module belongs to: ``hired.vllm.partitions`` →
    ``hired.vllm``."""
    return ".".join(module.split(".")[:2])


def private_crossings(imports: list[Import], allowed=PRIVATE_ALLOWED) -> list[str]:
    """Private names (``_x``, not dunders) imported from another top-level subpackage of ``hired``."""
    out = set()
    for imp in imports:
        name = imp.name
        if name is None or not name.startswith("_") or name.startswith("__"):
            continue
        if _top(imp.importer) == _top(imp.module) or (imp.importer, f"{imp.module}.{name}") in allowed:
            continue
        out.add(f"{imp.importer} imports {imp.module}.{name}, line {imp.line}")
    return sorted(out)


def imports_of_testing(imports: list[Import]) -> list[str]:
    return sorted(
        {
            f"{imp.importer}, line {imp.line}"
            for imp in imports
            if imp.module == "hired.testing" or (imp.module == "hired" and imp.name == "testing")
        }
    )


def command_line_uses(name: str, source: str) -> list[str]:
    """argparse, ``CommandError``, ``sys.exit`` / ``exit`` / ``quit`` calls and ``SystemExit`` in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        what = None
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "argparse" for a in node.names):
            what = "imports argparse"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "argparse":
            what = "imports argparse"
        elif isinstance(node, (ast.ImportFrom, ast.Import)) and any(a.name == "CommandError" for a in node.names):
            what = "imports CommandError"
        elif isinstance(node, ast.Name) and node.id in ("SystemExit", "CommandError"):
            what = f"uses {node.id}"
        elif isinstance(node, ast.Attribute) and node.attr in ("SystemExit", "CommandError"):
            what = f"uses {node.attr}"
        elif isinstance(node, ast.Attribute) and node.attr == "exit" and getattr(node.value, "id", None) == "sys":
            what = "uses sys.exit"
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("exit", "quit"):
            what = f"calls {node.func.id}()"
        if what:
            found.append(f"{name} {what}, line {node.lineno}")
    return found


def command_line_outside_cli(found: dict[str, Path], allowed=COMMAND_LINE_ALLOWED, layers=LAYERS) -> list[str]:
    out = []
    for name, path in found.items():
        if layer_of(name, layers) == "cli" or name in allowed:
            continue
        out += command_line_uses(name, path.read_text(encoding="utf-8"))
    return out


# ------------------------------------------------------------------------------------------ the package


MAX_LINES = 600
"""No source file is longer: a longer one holds more than one concern."""


def long_files(found: dict[str, Path], limit: int = MAX_LINES) -> list[str]:
    """``"module: N lines"`` for every module over ``limit`` lines."""
    out = []
    for name, path in sorted(found.items()):
        n = len(path.read_text().splitlines())
        if n > limit:
            out.append(f"{name}: {n} lines")
    return out


_FAMILY_NAMES = {"family", "fam"}


def family_identity_branches(name: str, source: str) -> list[str]:
    """Places in ``source`` that compare a family's ``name`` with a string (``family.name == "onevision"``,
    ``fam.name in ("qwen2_5_vl", ...)``) or test ``isinstance`` against a family class: what differs
    between families is a capability of the family, never a test of which family it is."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            named = any(
                isinstance(side, ast.Attribute)
                and side.attr == "name"
                and (
                    (isinstance(side.value, ast.Name) and side.value.id in _FAMILY_NAMES)
                    or (isinstance(side.value, ast.Attribute) and side.value.attr in _FAMILY_NAMES)
                )
                for side in sides
            )
            literal = any(
                isinstance(side, ast.Constant | ast.Tuple | ast.List | ast.Set) for side in node.comparators
            ) or isinstance(node.left, ast.Constant)
            if named and literal:
                out.append(f"{name} compares a family's name, line {node.lineno}")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            if (
                len(node.args) == 2
                and "Family" not in ast.unparse(node.args[1])
                and ast.unparse(node.args[1]).split(".")[-1] in FAMILY_CLASSES
            ):
                out.append(f"{name} tests isinstance of a family class, line {node.lineno}")
    return out


FAMILY_CLASSES = {"InternVL", "Llava", "LlavaNext", "Onevision", "Qwen25VL", "Qwen35", "Qwen3VL"}


@pytest.fixture(scope="module")
def graph():
    found = modules()
    return found, all_imports()


def test_the_source_is_where_the_test_looks(graph):
    found, imports = graph
    assert {"hired", "hired.cli", "hired.core.grid", "hired.methods.options", "hired.testing"} <= set(found)
    assert len(imports) > 100


def test_every_module_has_a_layer(graph):
    found, _ = graph
    missing = unmapped(found)
    assert not missing, f"add these modules to LAYERS in {Path(__file__).name}: {', '.join(missing)}"


def test_no_import_cycle(graph):
    _, imports = graph
    found = cycles(edges_of(imports))
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_from_a_higher_layer(graph):
    _, imports = graph
    bad = upward(imports)
    assert not bad, "imports from a higher layer (" + " < ".join(ORDER) + "):\n" + "\n".join(bad)


def test_the_allow_lists_hold_only_what_is_still_needed(graph):
    _, imports = graph
    pairs = {(imp.importer, imp.module) for imp in imports}
    stale = sorted(f"{a} -> {b}" for a, b in UPWARD_ALLOWED if (a, b) not in pairs)
    names = {(imp.importer, f"{imp.module}.{imp.name}") for imp in imports}
    stale += sorted(f"{a} -> {b}" for a, b in PRIVATE_ALLOWED if (a, b) not in names)
    assert not stale, "no longer imported, remove from the allow-list: " + ", ".join(stale)


def test_no_private_name_crosses_subpackages(graph):
    _, imports = graph
    bad = private_crossings(imports)
    assert not bad, "private names imported from another subpackage:\n" + "\n".join(bad)


def test_no_shipped_module_imports_the_test_models(graph):
    _, imports = graph
    bad = imports_of_testing(imports)
    assert not bad, "hired.testing is for tests, benchmarks and docs; imported by: " + ", ".join(bad)


def test_the_command_line_lives_in_hired_cli(graph):
    found, _ = graph
    bad = command_line_outside_cli(found)
    assert not bad, "argparse / CommandError / sys.exit / SystemExit outside hired.cli:\n" + "\n".join(bad)


# ------------------------------------------------------------------------------------------ each check can fail


def _fake(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / "src" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path / "src"


@pytest.fixture
def bad_tree(tmp_path):
    return _fake(
        tmp_path,
        {
            "hired/__init__.py": "",
            "hired/core/__init__.py": "",
            "hired/core/grid.py": "def f():\n    from hired.viz import _draw\n",  # up two layers, private
            "hired/viz.py": "import argparse\nfrom hired.core import grid\nraise SystemExit(2)\n",
            "hired/methods/__init__.py": "from hired.testing import tiny\n",
            "hired/testing.py": "",
            "hired/extra.py": "",
        },
    )


def test_check_unmapped_modules_fail(bad_tree):
    assert unmapped(modules(bad_tree)) == ["hired.extra"]


def test_check_a_cycle_is_found_with_its_path(bad_tree):
    found = cycles(edges_of(all_imports(bad_tree)))
    assert found == [["hired.core.grid", "hired.viz", "hired.core.grid"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_check_an_upward_import_fails_unless_allowed(bad_tree):
    imports = all_imports(bad_tree)
    assert upward(imports, allowed={}) == [
        "hired.core.grid (core) imports hired.viz (tools), line 2",
        "hired.methods (methods) imports hired.testing (tools), line 1",
    ]
    allowed = {("hired.core.grid", "hired.viz"): "test", ("hired.methods", "hired.testing"): "test"}
    assert upward(imports, allowed=allowed) == []


def test_check_a_private_name_across_subpackages_fails(bad_tree):
    imports = all_imports(bad_tree)
    assert private_crossings(imports) == ["hired.core.grid imports hired.viz._draw, line 2"]
    same = [Import("hired.vllm.qwen2_5_vl", "hired.vllm.partitions", "_private", 1)]
    assert private_crossings(same) == []  # inside one subpackage


def test_check_importing_the_test_models_fails(bad_tree):
    assert imports_of_testing(all_imports(bad_tree)) == ["hired.methods, line 1"]


def test_check_the_command_line_outside_cli_fails(bad_tree):
    bad = command_line_outside_cli(modules(bad_tree))
    assert bad == ["hired.viz imports argparse, line 1", "hired.viz uses SystemExit, line 3"]
    assert command_line_uses("m", "import sys\nsys.exit(1)\n") == ["m uses sys.exit, line 2"]
    assert command_line_uses("m", "from hired.cli.common import CommandError\n") == ["m imports CommandError, line 1"]


def test_no_source_file_is_over_the_limit(graph):
    assert long_files(modules()) == []


def test_no_code_outside_the_families_asks_which_family_it_has(graph):
    found = [
        line
        for name, path in modules().items()
        if not name.startswith("hired.families")
        for line in family_identity_branches(name, path.read_text())
    ]
    assert found == []


def test_check_a_long_file_fails(tmp_path):
    root = _fake(tmp_path, {"hired/core/big.py": "x = 1\n" * 601, "hired/core/small.py": "x = 1\n" * 600})
    assert long_files(modules(root)) == ["hired.core.big: 601 lines"]


def test_check_a_branch_on_a_family_name_fails():
    source = (
        "def f(family, self):\n"
        "    if family.name == 'onevision':\n"
        "        pass\n"
        "    nest = self.family.name in ('llava', 'llava_next')\n"
        "    ok = family.newline and family.name\n"
        "    return isinstance(family, Qwen25VL)\n"
    )
    assert family_identity_branches("m", source) == [
        "m compares a family's name, line 2",
        "m compares a family's name, line 4",
        "m tests isinstance of a family class, line 6",
    ]
