"""Per-event failures: count each attempt on the outbox row, dead-letter after MAX_RETRY.

Every step is committed before the event's DLQ entry is published, so a crash in
between replays into the same state (the DLQ publish itself is deduplicated).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from psycopg import sql

from cdc import db
from cdc.db import Conn
from cdc.decode import OutboxEvent
from cdc.errors import EventError

log = logging.getLogger(__name__)


class DeadLetters:
    """Record failed attempts and dead letters in PostgreSQL."""

    def __init__(self, conn: Conn, *, table: str, max_retry: int) -> None:
        self._conn = conn
        self._max_retry = max_retry
        self._table = db.table_ident(table)
        self._dead_table = db.table_ident(table, "event_dead_letter")

    def fail(
        self, event: OutboxEvent, error: EventError, check: Callable[[OutboxEvent], str]
    ) -> str | None:
        """Retry `check` up to MAX_RETRY times; return its stream, or None when dead-lettered."""
        while True:
            with self._conn.transaction():
                row = self._conn.execute(
                    sql.SQL(
                        "UPDATE {} SET retry_count = retry_count + 1, status = 'FAILED',"
                        " last_error = %s WHERE id = %s AND status IN ('PENDING', 'FAILED')"
                        " RETURNING retry_count, payload::text"
                    ).format(self._table),
                    (str(error), event.event_id),
                ).fetchone()
                if row is None:  # already dead-lettered (a replay), or pruned
                    return None
                retries, payload = int(row[0]), str(row[1])
                if retries >= self._max_retry:
                    self._dead_letter(event, error, retries)
                    log.warning("event %s dead-lettered after %d attempts: %s",
                                event.event_id, retries, error)
                    return None
            event.payload = payload
            try:
                return check(event)
            except EventError as again:
                error = again

    def _dead_letter(self, event: OutboxEvent, error: EventError, retries: int) -> None:
        self._conn.execute(
            sql.SQL("UPDATE {} SET status = 'DEAD_LETTER' WHERE id = %s").format(self._table),
            (event.event_id,),
        )
        self._conn.execute(
            sql.SQL(
                "INSERT INTO {} (event_id, tenant_id, aggregate_type, aggregate_id, event_type,"
                " payload, error, retry_count, created_at)"
                " SELECT id, tenant_id, aggregate_type, aggregate_id, event_type, payload, %s, %s,"
                " created_at FROM {} WHERE id = %s ON CONFLICT (event_id) DO NOTHING"
            ).format(self._dead_table, self._table),
            (str(error), retries, event.event_id),
        )
