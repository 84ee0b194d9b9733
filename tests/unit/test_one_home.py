"""Shared logic written once: the slot-lag SQL (cdc.pg.slots), XINFO GROUPS (cdc.streams.groups)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def holders(needle: str, *dirs: str) -> list[str]:
    return sorted(
        str(p.relative_to(ROOT)) for d in dirs for p in (ROOT / d).rglob("*.py")
        if needle in p.read_text() and p != Path(__file__).resolve()
    )


def test_the_slot_lag_sql_has_one_home() -> None:
    lag = "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)"
    assert holders(lag, "cdc", "tests", "devkit") == ["cdc/pg/slots.py"]


def test_xinfo_groups_is_read_in_one_place() -> None:
    assert holders("xinfo_groups(", "cdc") == ["cdc/streams/groups.py"]
