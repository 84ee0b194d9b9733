"""Weaver's business glossary: one entry per term and tenant (case-insensitive), prefix search."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from psycopg.rows import class_row

from cdc.domain.stores.base import Conn, Pool, transaction
from cdc.errors import StoreError

COLUMNS = (
    "id, tenant_id, term, definition, source_table, source_column, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class GlossaryEntry:
    """One row of weaver.glossary."""

    id: UUID
    tenant_id: str
    term: str
    definition: str | None
    source_table: str | None
    source_column: str | None
    created_at: datetime
    updated_at: datetime


def like_prefix(prefix: str) -> str:
    """Return a LIKE pattern matching strings that start with `prefix` literally."""
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


class GlossaryStore:
    """Upsert, look up and prefix-search glossary terms."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    def upsert(
        self,
        tenant_id: str,
        term: str,
        *,
        definition: str | None = None,
        source_table: str | None = None,
        source_column: str | None = None,
        conn: Conn | None = None,
    ) -> GlossaryEntry:
        """Insert a term or replace the entry with the same term (any case)."""
        term = term.strip()
        if not tenant_id or not term:
            raise StoreError("a glossary entry needs a tenant_id and a non-blank term")
        with transaction(self._pool, conn) as c:
            row = c.cursor(row_factory=class_row(GlossaryEntry)).execute(
                "INSERT INTO weaver.glossary"
                " (tenant_id, term, definition, source_table, source_column)"
                " VALUES (%s, %s, %s, %s, %s)"
                " ON CONFLICT (tenant_id, lower(term)) DO UPDATE SET term = EXCLUDED.term,"
                " definition = EXCLUDED.definition, source_table = EXCLUDED.source_table,"
                " source_column = EXCLUDED.source_column, updated_at = now()"
                f" RETURNING {COLUMNS}",
                (tenant_id, term, definition, source_table, source_column),
            ).fetchone()
        assert row is not None
        return row

    def lookup(self, tenant_id: str, term: str) -> GlossaryEntry | None:
        """Return the entry for `term` (case-insensitive), or None."""
        with transaction(self._pool) as c:
            return c.cursor(row_factory=class_row(GlossaryEntry)).execute(
                f"SELECT {COLUMNS} FROM weaver.glossary"
                " WHERE tenant_id = %s AND lower(term) = lower(%s)",
                (tenant_id, term.strip()),
            ).fetchone()

    def search_prefix(self, tenant_id: str, prefix: str, *, limit: int = 20) -> list[GlossaryEntry]:
        """Return entries whose term starts with `prefix` (case-insensitive), by term."""
        with transaction(self._pool) as c:
            return c.cursor(row_factory=class_row(GlossaryEntry)).execute(
                f"SELECT {COLUMNS} FROM weaver.glossary"
                " WHERE tenant_id = %s AND lower(term) LIKE lower(%s)"
                " ORDER BY lower(term) LIMIT %s",
                (tenant_id, like_prefix(prefix.strip()), limit),
            ).fetchall()
