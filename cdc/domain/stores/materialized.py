"""Weaver's materialized tables: what is built from which data source, and how fresh it is.

    PENDING --start_refresh--> REFRESHING --finish_refresh--> READY
                                   |  --fail_refresh-->  FAILED
    READY or FAILED --start_refresh--> REFRESHING; redefine puts a table back to PENDING

Every change but `start_refresh` emits its event in the same transaction
(MATERIALIZED_TABLE_REGISTERED, _REDEFINED, _REFRESHED, _REFRESH_FAILED). Each refresh is
numbered (`refresh_count`), which makes its event's idempotency key; a redefinition's
event has none (the same text may come back).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import class_row

from cdc.domain import outbox
from cdc.domain.stores.base import Conn, EventStore, as_uuid, transaction
from cdc.errors import StoreError

AGGREGATE = "materialized_table"
STATES = ("PENDING", "REFRESHING", "READY", "FAILED")
COLUMNS = (
    "id, tenant_id, datasource_id, target, definition, refresh_state, refresh_count,"
    " last_refresh_at, last_row_count, last_error, created_at, updated_at"
)


@dataclass(frozen=True, slots=True)
class MaterializedTable:
    """One row of weaver.materialized_table."""

    id: UUID
    tenant_id: str
    datasource_id: UUID
    target: str
    definition: str
    refresh_state: str
    refresh_count: int
    last_refresh_at: datetime | None
    last_row_count: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime


class MaterializedTableStore(EventStore):
    """Register materialized tables and record their refreshes."""

    def register(
        self, tenant_id: str, datasource_id: UUID | str, target: str, definition: str,
        *, conn: Conn | None = None,
    ) -> MaterializedTable:
        """Add a PENDING table fed by one of the tenant's data sources."""
        did = as_uuid(datasource_id, "data source")
        if not tenant_id or not target.strip() or not definition.strip():
            raise StoreError("a materialized table needs a tenant_id, a target and a definition")
        with transaction(self._pool, conn) as c:
            try:
                row = c.cursor(row_factory=class_row(MaterializedTable)).execute(
                    "INSERT INTO weaver.materialized_table"
                    " (tenant_id, datasource_id, target, definition)"
                    f" VALUES (%s, %s, %s, %s) RETURNING {COLUMNS}",
                    (tenant_id, did, target.strip(), definition),
                ).fetchone()
            except psycopg.errors.UniqueViolation:
                raise StoreError(
                    f"materialized table {target.strip()!r} already exists for tenant {tenant_id}",
                    hint="redefine the existing one or pick another target",
                ) from None
            except psycopg.errors.ForeignKeyViolation:
                raise StoreError(f"data source {did} not found for tenant {tenant_id}") from None
            assert row is not None
            self._emit(c, row, "MATERIALIZED_TABLE_REGISTERED", "registered",
                       {"datasource_id": str(did)})
        return row

    def redefine(
        self, tenant_id: str, table_id: UUID | str, definition: str, *, conn: Conn | None = None
    ) -> MaterializedTable:
        """Replace the definition; the table is PENDING until its next refresh."""
        if not definition.strip():
            raise StoreError("a materialized table's definition may not be blank")
        tid = as_uuid(table_id, "materialized table")
        with transaction(self._pool, conn) as c:
            self._expect(c, tenant_id, tid, ("PENDING", "READY", "FAILED"), "redefine")
            row = self._update(
                c, tid, "definition = %s, refresh_state = 'PENDING'", (definition,)
            )
            self._emit(c, row, "MATERIALIZED_TABLE_REDEFINED", None, {})
        return row

    def start_refresh(
        self, tenant_id: str, table_id: UUID | str, *, conn: Conn | None = None
    ) -> MaterializedTable:
        """Mark the table REFRESHING; a second refresher is refused until this one ends."""
        tid = as_uuid(table_id, "materialized table")
        with transaction(self._pool, conn) as c:
            self._expect(c, tenant_id, tid, ("PENDING", "READY", "FAILED"), "start refreshing")
            return self._update(
                c, tid, "refresh_state = 'REFRESHING', refresh_count = refresh_count + 1", ()
            )

    def finish_refresh(
        self, tenant_id: str, table_id: UUID | str, *, row_count: int, conn: Conn | None = None
    ) -> MaterializedTable:
        """Record a successful refresh and emit MATERIALIZED_TABLE_REFRESHED."""
        tid = as_uuid(table_id, "materialized table")
        with transaction(self._pool, conn) as c:
            self._expect(c, tenant_id, tid, ("REFRESHING",), "finish refreshing")
            row = self._update(
                c, tid, "refresh_state = 'READY', last_refresh_at = now(), last_row_count = %s,"
                " last_error = NULL", (row_count,),
            )
            self._emit(c, row, "MATERIALIZED_TABLE_REFRESHED", f"refresh:{row.refresh_count}",
                       {"refresh": row.refresh_count, "row_count": row_count})
        return row

    def fail_refresh(
        self, tenant_id: str, table_id: UUID | str, error: str, *, conn: Conn | None = None
    ) -> MaterializedTable:
        """Record a failed refresh (the last good one stays) and emit _REFRESH_FAILED."""
        tid = as_uuid(table_id, "materialized table")
        with transaction(self._pool, conn) as c:
            self._expect(c, tenant_id, tid, ("REFRESHING",), "fail refreshing")
            row = self._update(c, tid, "refresh_state = 'FAILED', last_error = %s", (error,))
            self._emit(c, row, "MATERIALIZED_TABLE_REFRESH_FAILED",
                       f"refresh:{row.refresh_count}",
                       {"refresh": row.refresh_count, "error": error})
        return row

    def get(self, tenant_id: str, table_id: UUID | str) -> MaterializedTable | None:
        """Return one table of `tenant_id`, or None."""
        tid = as_uuid(table_id, "materialized table")
        with transaction(self._pool) as c:
            return c.cursor(row_factory=class_row(MaterializedTable)).execute(
                f"SELECT {COLUMNS} FROM weaver.materialized_table WHERE id = %s AND tenant_id = %s",
                (tid, tenant_id),
            ).fetchone()

    def list_tables(
        self, tenant_id: str, *, datasource_id: UUID | str | None = None
    ) -> list[MaterializedTable]:
        """Return a tenant's tables by target, optionally only those of one data source."""
        did = None if datasource_id is None else as_uuid(datasource_id, "data source")
        with transaction(self._pool) as c:
            return c.cursor(row_factory=class_row(MaterializedTable)).execute(
                f"SELECT {COLUMNS} FROM weaver.materialized_table WHERE tenant_id = %s"
                " AND (%s::uuid IS NULL OR datasource_id = %s) ORDER BY target",
                (tenant_id, did, did),
            ).fetchall()

    @staticmethod
    def _expect(
        c: Conn, tenant_id: str, tid: UUID, allowed: tuple[str, ...], action: str
    ) -> None:
        """Lock the row and check its state allows `action`."""
        row = c.execute(
            "SELECT refresh_state FROM weaver.materialized_table WHERE id = %s AND tenant_id = %s"
            " FOR UPDATE", (tid, tenant_id),
        ).fetchone()
        if row is None:
            raise StoreError(f"materialized table {tid} not found for tenant {tenant_id}")
        if row[0] not in allowed:
            raise StoreError(
                f"cannot {action} materialized table {tid}: it is {row[0]},"
                f" {action} needs {' or '.join(allowed)}"
            )

    @staticmethod
    def _update(c: Conn, tid: UUID, assignments: str, params: tuple[Any, ...]) -> MaterializedTable:
        row = c.cursor(row_factory=class_row(MaterializedTable)).execute(
            f"UPDATE weaver.materialized_table SET {assignments}, updated_at = now()"
            f" WHERE id = %s RETURNING {COLUMNS}", (*params, tid),
        ).fetchone()
        assert row is not None
        return row

    def _emit(
        self, c: Conn, row: MaterializedTable, event_type: str, suffix: str | None,
        extra: dict[str, Any],
    ) -> None:
        self._publish(c, outbox.Event(
            tenant_id=row.tenant_id, aggregate_type=AGGREGATE, aggregate_id=str(row.id),
            event_type=event_type,
            payload={"table_id": str(row.id), "target": row.target, **extra},
            idempotency_key=None if suffix is None else f"{AGGREGATE}:{row.id}:{suffix}",
        ))
