"""Rules the package keeps that no type checker sees."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "cdc"
# redis-py's private state: its socket, parser and buffers can change in any release.
REDIS_PRIVATE = {"_sock", "_parser", "_buffer", "_reader", "_conn"}


def test_no_private_redis_py_attribute_is_read() -> None:
    found = []
    for path in PKG.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in REDIS_PRIVATE:
                # our own objects' `self._conn` (a psycopg connection) are not redis-py's
                if isinstance(node.value, ast.Name) and node.value.id == "self":
                    continue
                found.append(f"{path.relative_to(PKG.parent)}:{node.lineno} .{node.attr}")
    assert not found, found
