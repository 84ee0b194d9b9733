"""cdc/commands is argparse and printing: the SQL lives in cdc/pg, cdc/ops and cdc/domain."""

from __future__ import annotations

import ast
import re
from pathlib import Path

COMMANDS = Path(__file__).resolve().parents[2] / "cdc" / "commands"
SQL = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|ALTER|CREATE)\b.*\b(FROM|INTO|SET|TABLE)\b",
                 re.S)


def sql_in(path: Path) -> list[str]:
    """Return what in `path` runs or spells SQL: .execute* calls, cursors, SQL text."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and (
            node.func.attr in ("execute", "executemany", "cursor", "copy")
        ):
            found.append(f"{path.name}:{node.lineno}: .{node.func.attr}(...)")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(
            node.value
        ) and not node.value.startswith(("`", "cdc ")) and "\n" not in node.value[:1]:
            found.append(f"{path.name}:{node.lineno}: {node.value[:60]!r}")
        elif isinstance(node, ast.ImportFrom) and node.module == "psycopg" and any(
            a.name == "sql" for a in node.names
        ):
            found.append(f"{path.name}:{node.lineno}: from psycopg import sql")
    return found


def test_commands_hold_no_sql() -> None:
    files = sorted(COMMANDS.glob("*.py"))
    assert len(files) > 10
    found = [hit for f in files for hit in sql_in(f)]
    assert not found, found


def test_the_check_finds_sql(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text('def f(conn):\n    return conn.execute("SELECT id FROM weaver.datasource")\n')
    assert len(sql_in(bad)) == 2
