"""No import cycle in cdc/: module-level imports only (TYPE_CHECKING blocks do not run)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "cdc"


def _module(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """Return the cdc modules `path` imports when it is loaded."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # top level only: not inside functions
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.FunctionDef | ast.AsyncFunctionDef):
                break
            if isinstance(sub, ast.Import):
                out |= {a.name for a in sub.names if a.name.startswith("cdc")}
            elif isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith("cdc"):
                for a in sub.names:
                    name = f"{sub.module}.{a.name}"
                    out.add(name if name in modules else sub.module)
    return out


def test_no_import_cycle_in_the_package() -> None:
    paths = {_module(p): p for p in PKG.rglob("*.py")}
    graph = {m: _imports(p, set(paths)) - {m} for m, p in paths.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for dep in sorted(graph.get(m, ())):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep):], dep])
            elif dep in graph and not state.get(dep):
                visit(dep, [*stack, dep])
        state[m] = 2

    for m in sorted(graph):
        if not state.get(m):
            visit(m, [m])
    assert len(paths) > 30 and any(graph.values())  # the walk found the package's imports
    assert not cycles, cycles
