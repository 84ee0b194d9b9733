"""The producer side of the outbox (the seed's EventPublisher.publish).

`emit` inserts one event into the outbox table inside the caller's transaction, so the
event exists exactly when the state change it describes commits. The relay streams it out
of the WAL; nothing here talks to Redis.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from uuid import UUID

import orjson
import psycopg
from psycopg import sql
from psycopg.rows import tuple_row

from cdc.errors import ConfigError, EventError, StoreError
from cdc.observe import tracing
from cdc.pg.ident import TABLE_RE
from cdc.pipeline.contracts import Registry, check_event

DEFAULT_TABLE = "public.event_outbox"

Target: TypeAlias = psycopg.Connection[Any] | psycopg.Cursor[Any]


@dataclass(frozen=True, slots=True)
class Event:
    """One domain event as a producer writes it."""

    tenant_id: str
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: Mapping[str, Any] = field(default_factory=dict)
    idempotency_key: str | None = None  # lands in payload["idempotency_key"]

    def body(self) -> dict[str, Any]:
        """Return the payload with the idempotency key merged in."""
        body = dict(self.payload)
        if self.idempotency_key is not None:
            present = body.get("idempotency_key")
            if present is not None and present != self.idempotency_key:
                raise EventError(
                    f"{self.event_type}: idempotency_key given twice with different values"
                )
            body["idempotency_key"] = self.idempotency_key
        return body


def table_identifier(table: str) -> sql.Identifier:
    """Return `schema.name` as a safely quoted identifier, or raise ConfigError."""
    m = TABLE_RE.match(table)
    if not m:
        raise ConfigError(
            f"outbox table {table!r} is not schema.name", hint="set CDC_OUTBOX_TABLE"
        )
    return sql.Identifier(m.group(1), m.group(2))


def _check(event: Event, registry: Registry, max_bytes: int | None) -> bytes:
    for name in ("tenant_id", "aggregate_type", "aggregate_id", "event_type"):
        value = getattr(event, name)
        if not isinstance(value, str) or not value.strip():
            raise EventError(f"event {name} must be a non-empty string, got {value!r}")
    try:
        data = orjson.dumps(event.body())
    except TypeError as e:
        raise EventError(f"{event.event_type}: payload is not JSON-serialisable: {e}") from None
    check_event(registry, event.event_type, data.decode(), max_bytes)  # as the relay will
    return data


def prepare(
    event: Event, *, registry: Registry | None = None, max_bytes: int | None = None
) -> dict[str, str]:
    """Check `event` and return the row to insert: column -> value (payload as JSON text).

    The current OpenTelemetry span, if any, adds traceparent/tracestate (cdc.observe.tracing).
    """
    data = _check(event, registry or Registry(), max_bytes)
    return {"tenant_id": event.tenant_id, "aggregate_type": event.aggregate_type,
            "aggregate_id": event.aggregate_id, "event_type": event.event_type,
            "payload": data.decode(), **tracing.current()}


def translate(e: Exception, event: Event, table: str) -> Exception:
    """Return the cdc error for a driver error `e` raised by inserting `event` into `table`."""
    sqlstate = getattr(e, "sqlstate", None)
    if sqlstate == "23505":  # unique_violation: the idempotency key index
        return EventError(
            f"{event.event_type}: idempotency key {event.body().get('idempotency_key')!r} "
            f"was already emitted for tenant {event.tenant_id}",
            hint="roll back: this change was already recorded",
        )
    if sqlstate == "42P01":  # undefined_table
        return ConfigError(
            f"outbox table {table} does not exist",
            hint="run `cdc migrate` or set CDC_OUTBOX_TABLE",
        )
    if sqlstate == "42703":  # undefined_column: a traced event, an outbox without 009
        return ConfigError(
            f"{table} has no traceparent/tracestate columns: {e}",
            hint="run `cdc migrate` (sql/009_outbox_trace_context.sql)",
        )
    return StoreError(f"cannot write {event.event_type} to {table}: {e}")


def emit(
    target: Target,
    event: Event,
    *,
    table: str = DEFAULT_TABLE,
    registry: Registry | None = None,
    max_bytes: int | None = None,
) -> UUID:
    """Insert `event` in the caller's transaction and return its id; validate first.

    A contract violation raises EventError before anything is written. A repeated
    idempotency key raises EventError too, and leaves the caller's transaction aborted:
    roll it back. (cdc.domain.sqla does the same inside a SQLAlchemy session.)
    """
    row_values = prepare(event, registry=registry, max_bytes=max_bytes)
    query = sql.SQL("INSERT INTO {} ({}) VALUES ({}) RETURNING id").format(
        table_identifier(table), sql.SQL(", ").join(map(sql.Identifier, row_values)),
        sql.SQL(", ").join(
            sql.SQL("%s::jsonb" if name == "payload" else "%s") for name in row_values),
    )
    conn = target.connection if isinstance(target, psycopg.Cursor) else target
    try:
        with conn.cursor(row_factory=tuple_row) as cur:
            row = cur.execute(query, tuple(row_values.values())).fetchone()
    except psycopg.Error as e:
        raise translate(e, event, table) from None
    if row is None:  # pragma: no cover - INSERT ... RETURNING always returns a row
        raise StoreError(f"{table}: INSERT returned no id")
    event_id: UUID = row[0]
    return event_id
