"""cptlab's modules import each other without cycles, and library code never imports a command-line front end.

Read from the source with `ast`, every import counted, function-level ones included (a lazy import still
ties two modules together); only an `if __name__ == "__main__":` block is left out: it runs when its module
is the program, never when another module imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cptlab"


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_main_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and any(isinstance(c, ast.Constant) and c.value == "__main__"
                                                   for c in test.comparators))


def imported_names(path: Path, module: str) -> set[str]:
    """Absolute names of everything `path` imports (`from a import b` gives `a.b`), `__main__` blocks left out."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_main_block(node):
            return
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return names


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    return {m: {n for n in imported_names(p, m) if n in files and n != m} for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"cptlab.cli.train_app", "cptlab.cli.train", "cptlab.run.pipeline", "cptlab.run.record",
            "cptlab.data.tokens"} <= set(graph)
    assert "cptlab.run.build" in graph["cptlab.cli.train_app"] and "cptlab.run.pipeline" in graph["cptlab.run.build"]
    assert "cptlab.cli.train_app" in graph["cptlab.cli.train"]  # a function-level import counts
    assert "cptlab.data.tokens" in graph["cptlab.run.pipeline"]


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_cptlab_modules_import_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_front_ends_import_the_cli():
    """cptlab.cli holds the command-line front ends; no library module imports one (the layer test says so too:
    this one names the importer plainly)."""
    graph = import_graph()
    importers = sorted(m for m, deps in graph.items() if not m.startswith("cptlab.cli")
                       and any(d == "cptlab.cli" or d.startswith("cptlab.cli.") for d in deps))
    assert importers == [], f"{importers} import a front end (cptlab.cli) outside an `if __name__ == '__main__':` block"


def test_main_blocks_are_left_out(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("import os\nfrom . import sibling\ndef f():\n    from .deep import g\n"
                   "if __name__ == '__main__':\n    import cptlab.cli.train\n")
    assert imported_names(src, "cptlab.pkg.mod") == {"os", "cptlab.pkg", "cptlab.pkg.sibling", "cptlab.pkg.deep",
                                                     "cptlab.pkg.deep.g"}


# The modules that may import the schema (cptlab.config): front ends and the run's assembly, which check values
# against its rules; every library below takes values already checked (issue #28).
CONFIG_IMPORTERS = ("cptlab.cli", "cptlab.run", "cptlab.compare")


def test_no_library_module_imports_the_config():
    graph = import_graph()
    importers = sorted(m for m, deps in graph.items() if "cptlab.config" in deps and m != "cptlab.config"
                       and not any(m == p or m.startswith(p + ".") for p in CONFIG_IMPORTERS))
    assert importers == [], f"{importers} import cptlab.config: a library takes checked values (a front end or " \
                            "cptlab.run checks them against the schema's rules)"


# Layers, lowest first: a module may import its own layer's modules and lower layers' (sideways arrows between
# packages of one layer are allowed while they make no cycle), never a higher layer's.
LAYERS = [
    ["cptlab", "cptlab.errors", "cptlab.utils"],
    ["cptlab.config", "cptlab.rundir"],
    ["cptlab.tokenizer", "cptlab.data", "cptlab.model"],
    ["cptlab.evaluation"],
    ["cptlab.training"],
    ["cptlab.run"],
    ["cptlab.compare"],
    ["cptlab.cli"],
]
MAX_LOOSE_FILES = 8


def layer_of(module: str) -> int:
    """The layer of the longest LAYERS entry that is `module` or a package holding it."""
    best, found = -1, None
    for i, members in enumerate(LAYERS):
        for m in members:
            if (module == m or module.startswith(m + ".")) and len(m) > best:
                best, found = len(m), i
    if found is None:
        raise AssertionError(f"{module} is in no layer of tests/test_import_graph.py LAYERS")
    return found


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (layer {layer_of(m)}) -> {d} (layer {layer_of(d)})"
                  for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m))


def test_no_arrow_runs_up_the_layers():
    arrows = upward_arrows(import_graph())
    assert arrows == [], "imports from a lower layer to a higher one:\n  " + "\n  ".join(arrows)


def test_upward_arrows_are_found():
    assert upward_arrows({"cptlab.data.tokens": {"cptlab.run.build"}, "cptlab.run.build": {"cptlab.data.tokens"}}) \
        == ["cptlab.data.tokens (layer 2) -> cptlab.run.build (layer 5)"]


def test_few_loose_files_at_the_top():
    loose = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(loose) <= MAX_LOOSE_FILES, f"{len(loose)} modules at the top of cptlab/: {loose}"
