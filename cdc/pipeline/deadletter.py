"""Per-event failures: count each attempt on the outbox row, dead-letter after MAX_RETRY.

Every step is committed before the event's DLQ entry is published, so a crash in
between replays into the same state (the DLQ publish itself is deduplicated). A dead
letter always ends as all three: the row DEAD_LETTER, an `event_dead_letter` row, and
one DLQ entry. A row decoded before its commit is visible is waited for, never taken
for "already dead-lettered".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final

import orjson
from psycopg import sql

from cdc.errors import EventError, EventTooLarge, SourceError
from cdc.pg import db
from cdc.pg.db import Conn
from cdc.pipeline.decode import OutboxEvent
from cdc.pipeline.marks import FENCE_PASSED_SQL, take_fence

log = logging.getLogger(__name__)

PREFIX_BYTES = 4096  # what a dead letter keeps of a payload over the size limit
SKIP: Final = ""  # fail(): the event was published before (a replay): send nothing
VISIBLE_WAIT_S = 5.0  # how long to wait for a decoded row to become visible


def prefix(payload: str, limit: int = PREFIX_BYTES) -> str:
    """Return at most `limit` UTF-8 bytes of `payload`, cut at a character boundary."""
    if len(payload) <= limit // 4:
        return payload
    return payload.encode()[:limit].decode(errors="ignore")


def kept_payload(event: OutboxEvent, error: EventError) -> tuple[str, int, bool]:
    """Return (the payload a dead letter keeps, the payload's size, whether it is cut)."""
    if isinstance(error, EventTooLarge):
        return prefix(event.payload), error.size, True
    return event.payload, len(event.payload.encode()), False


class DeadLetters:
    """Record failed attempts and dead letters in PostgreSQL."""

    def __init__(
        self, conn: Conn, *, table: str, max_retry: int, visible_wait_s: float = VISIBLE_WAIT_S
    ) -> None:
        self._conn = conn
        self._max_retry = max_retry
        self._wait_s = visible_wait_s
        self.last_error: EventError | None = None  # what fail() dead-lettered its event for
        t = db.table_ident(table)
        self._attempt = sql.SQL(
            "UPDATE {} SET retry_count = retry_count + 1, status = 'FAILED', last_error = %s"
            " WHERE id = %s AND status IN ('PENDING', 'FAILED')"
            " RETURNING retry_count, CASE WHEN %s THEN NULL ELSE payload::text END"
        ).format(t)
        self._status = sql.SQL("SELECT status FROM {} WHERE id = %s").format(t)
        self._mark_dead = sql.SQL("UPDATE {} SET status = 'DEAD_LETTER' WHERE id = %s").format(t)
        self._insert_dead = sql.SQL(
            "INSERT INTO {} (event_id, tenant_id, aggregate_type, aggregate_id, event_type,"
            " payload, error, retry_count, created_at, payload_bytes, payload_truncated)"
            " VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s::timestamptz, %s, %s)"
            " ON CONFLICT (event_id) DO NOTHING"
        ).format(db.table_ident(table, "event_dead_letter"))

    def fail(
        self, event: OutboxEvent, error: EventError, check: Callable[[OutboxEvent], str]
    ) -> str | None:
        """Retry `check` up to MAX_RETRY times.

        Return its stream; None when the event is dead-lettered (publish its DLQ entry);
        SKIP when the row is PUBLISHED already (a replayed position: nothing to send).
        """
        self.last_error = None
        while True:
            with self._conn.transaction():
                too_large = isinstance(error, EventTooLarge)
                row = self._conn.execute(
                    self._attempt, (str(error), event.event_id, too_large)
                ).fetchone()
                if row is not None and int(row[0]) >= self._max_retry:
                    self._dead_letter(event, error, int(row[0]), mark=True)
                    return None
            if row is None:
                status = self._wait_visible(event, error)
                if status == "PUBLISHED":
                    return SKIP
                if status != "PENDING":  # DEAD_LETTER already (a replay), or deleted
                    return None
                continue  # visible now: count this attempt on it
            if row[1] is not None:
                event.payload = str(row[1])
            try:
                return check(event)
            except EventError as again:
                error = again

    def _wait_visible(self, event: OutboxEvent, error: EventError) -> str | None:
        """Return the row's status once visible; None when it was deleted (then record it)."""
        fence = take_fence(self._conn)
        deadline, pause = time.monotonic() + self._wait_s, 0.005
        while True:
            row = self._conn.execute(self._status, (event.event_id,)).fetchone()
            if row is not None:
                return "PENDING" if row[0] == "FAILED" else str(row[0])
            passed = self._conn.execute(FENCE_PASSED_SQL, (fence,)).fetchone()
            if passed and passed[0]:
                if self._conn.execute(self._status, (event.event_id,)).fetchone() is None:
                    log.warning("event %s failed (%s) and its outbox row was deleted:"
                                " dead-lettered from the WAL copy", event.event_id, error)
                    with self._conn.transaction():
                        self._dead_letter(event, error, self._max_retry, mark=False)
                    return None
                continue
            if time.monotonic() > deadline:
                raise SourceError(
                    f"event {event.event_id} was decoded but its row is not visible after"
                    f" {self._wait_s:.0f} s",
                    hint="a transaction waits after its commit, usually for a synchronous"
                    " standby (SELECT pid, wait_event FROM pg_stat_activity WHERE"
                    " wait_event = 'SyncRep'); the relay retries",
                )
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def _dead_letter(self, event: OutboxEvent, error: EventError, retries: int, *,
                     mark: bool) -> None:
        self.last_error = error
        if mark:
            self._conn.execute(self._mark_dead, (event.event_id,))
        payload, size, cut = kept_payload(event, error)
        if cut:
            payload = orjson.dumps({"truncated": True, "bytes": size, "prefix": payload}).decode()
        self._conn.execute(self._insert_dead, (
            event.event_id, event.tenant_id, event.aggregate_type, event.aggregate_id,
            event.event_type, payload, str(error), retries, event.created_at, size, cut,
        ))
        log.warning("event %s dead-lettered after %d attempts: %s", event.event_id, retries,
                    error)
