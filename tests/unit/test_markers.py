"""Every marker pyproject.toml declares is put on some test; the long ones carry `slow`."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def used_markers() -> dict[str, set[str]]:
    """Return marker -> "file::test" (or "file" for a module-wide pytestmark)."""
    out: dict[str, set[str]] = {}
    for file in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(file.read_text())):
            exprs: list[ast.expr] = []
            where = file.name
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                exprs, where = list(node.decorator_list), f"{file.name}::{node.name}"
            elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
            ):
                exprs = [node.value]
            for expr in exprs:
                for sub in ast.walk(expr):
                    if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Attribute) \
                            and sub.value.attr == "mark":
                        out.setdefault(sub.attr, set()).add(where)
    return out


def test_every_declared_marker_is_used() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    declared = {m.split(":", 1)[0] for m in conf["markers"]}
    assert {"slow", "chaos", "deploy"} <= declared
    used = used_markers()
    assert not declared - set(used), declared - set(used)
    # the tests measured over 10 s (pytest --durations) are slow
    for test in ("test_sentinel.py::test_relay_and_tools_follow_a_sentinel_failover",
                 "test_relay_faults.py::test_kill9_during_50k_run_then_restart",
                 "test_ordered_consumer.py::"
                 "test_ordered_consumers_keep_aggregate_order_through_kill_and_pause"):
        assert test in used["slow"], test
