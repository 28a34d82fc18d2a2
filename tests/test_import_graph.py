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
    assert {"cptlab.train", "cptlab.cli", "cptlab.pipeline", "cptlab.run.record", "cptlab.data.tokens"} <= set(graph)
    assert "cptlab.run.build" in graph["cptlab.train"] and "cptlab.pipeline" in graph["cptlab.run.build"]
    assert "cptlab.train" in graph["cptlab.cli"]  # a function-level import counts
    assert "cptlab.data.tokens" in graph["cptlab.pipeline"]


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_cptlab_modules_import_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_front_ends_import_the_cli():
    """cptlab.cli is the `cptlab-train` front end; library code takes its helpers from cptlab.utils.console."""
    graph = import_graph()
    importers = sorted(m for m, deps in graph.items() if "cptlab.cli" in deps)
    assert importers == [], f"{importers} import cptlab.cli outside an `if __name__ == '__main__':` block"


def test_main_blocks_are_left_out(tmp_path):
    src = tmp_path / "mod.py"
    src.write_text("import os\nfrom . import sibling\ndef f():\n    from .deep import g\n"
                   "if __name__ == '__main__':\n    import cptlab.cli\n")
    assert imported_names(src, "cptlab.pkg.mod") == {"os", "cptlab.pkg", "cptlab.pkg.sibling", "cptlab.pkg.deep",
                                                     "cptlab.pkg.deep.g"}
