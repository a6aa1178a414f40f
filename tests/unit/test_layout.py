"""The layering of docs/architecture.md, checked on the source: who may import whom.

Read with ``ast`` (nothing is imported), so a cycle or a forbidden import fails here
with the module and line, before it becomes an ImportError at start-up.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "tasks", "app", "monitoring", "tts_batch_client")
TOP_MODULES = ("settings",)
PROJECT = PACKAGES + TOP_MODULES


@dataclass(frozen=True)
class Edge:
    """One import of a project module by another."""

    source: str
    target: str
    line: int
    in_function: bool


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _edges() -> list[Edge]:
    edges: list[Edge] = []
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")] + [ROOT / f"{m}.py" for m in TOP_MODULES]
    for path in files:
        module = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        local_nodes = {id(n) for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(fn)}
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            for target in targets:
                if target.split(".")[0] in PROJECT:
                    edges.append(Edge(module, target, node.lineno, id(node) in local_nodes))
    return edges


EDGES = _edges()
MODULES = {e.source for e in EDGES} | {_module_name(p) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _known(target: str) -> str | None:
    """The project module an import names (``from tasks import keys`` names ``tasks.keys``)."""
    return target if target in MODULES else None


def test_no_import_cycle_between_project_modules():
    graph: dict[str, set[str]] = {}
    for edge in EDGES:
        target = _known(edge.target)
        # a package's __init__ re-exporting its own modules is not a cycle of concepts
        if target and target != edge.source and not edge.source.startswith(target + ".") \
                and not (target.count(".") == 0 and edge.source.split(".")[0] == target):
            graph.setdefault(edge.source, set()).add(target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_function_local_import_of_project_modules_in_tasks_engine_monitoring():
    """A project import inside a function is how a cycle hides; the CLI alone imports lazily, for start-up time."""
    local = [f"{e.source}:{e.line} imports {e.target}" for e in EDGES
             if e.in_function and e.source.split(".")[0] in ("tasks", "engine", "monitoring", "app")
             and e.source != "app.cli"]
    assert local == []


@pytest.mark.parametrize(("package", "allowed"), [
    ("engine", {"engine"}),
    ("monitoring", {"monitoring", "settings", "tasks.keys"}),
    ("tasks", {"tasks", "engine", "monitoring", "settings"}),
    ("tts_batch_client", {"tts_batch_client"}),
])
def test_each_folder_imports_only_what_the_design_allows(package, allowed):
    wrong = []
    for edge in EDGES:
        if edge.source.split(".")[0] != package:
            continue
        target = _known(edge.target) or edge.target
        if target == "tasks" and edge.source.startswith("monitoring"):  # `from tasks import keys` names tasks.keys
            continue
        if not any(target == a or target.startswith(a + ".") for a in allowed):
            wrong.append(f"{edge.source}:{edge.line} imports {edge.target}")
    assert wrong == []


def test_test_files_have_unique_names():
    """The tests folders are not packages: two test files of one name stop pytest's collection."""
    names: dict[str, list[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        names.setdefault(path.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in names.items() if len(paths) > 1} == {}
