"""`emit` inside a SQLAlchemy 2 transaction: Session or Connection, AsyncSession or AsyncConnection.

Needs the optional extra: `pip install 'axiom-cdc[sqlalchemy]'` (psycopg 3 as the driver,
`postgresql+psycopg://`, sync and async). The checks, the statement and the errors are
cdc.domain.outbox's: a contract violation raises EventError before anything is sent; a repeated
idempotency key raises EventError and the session must be rolled back; the event commits
or rolls back with the session.

    with Session(engine) as session, session.begin():
        session.add(case)
        emit(session, Event(...))

    async with AsyncSession(engine) as session, session.begin():
        await emit_async(session, Event(...))
"""

from __future__ import annotations

from typing import Any, TypeAlias
from uuid import UUID

try:
    from sqlalchemy import Connection, TextClause, text
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session
except ModuleNotFoundError as e:  # tests/test_without_extras.py
    raise ModuleNotFoundError(
        f"cdc.domain.sqla needs SQLAlchemy: pip install 'axiom-cdc[sqlalchemy]' ({e})",
        name=e.name,
    ) from e

from cdc.domain import outbox
from cdc.pipeline.contracts import Registry

SyncTarget: TypeAlias = Session | Connection
AsyncTarget: TypeAlias = AsyncSession | AsyncConnection


def _statement(
    event: outbox.Event, table: str, registry: Registry | None, max_bytes: int | None
) -> tuple[TextClause, dict[str, str]]:
    outbox.table_identifier(table)  # raises unless schema.name of plain lower-case words
    quoted = ".".join(f'"{part}"' for part in table.split("."))
    row = outbox.prepare(event, registry=registry, max_bytes=max_bytes)
    values = ", ".join("CAST(:payload AS jsonb)" if c == "payload" else f":{c}" for c in row)
    stmt = text(f"INSERT INTO {quoted} ({', '.join(row)}) VALUES ({values}) RETURNING id")
    return stmt, row


def _id(value: Any) -> UUID:
    return value if isinstance(value, UUID) else UUID(str(value))


def emit(
    session: SyncTarget,
    event: outbox.Event,
    *,
    table: str = outbox.DEFAULT_TABLE,
    registry: Registry | None = None,
    max_bytes: int | None = None,
) -> UUID:
    """Insert `event` in the session's transaction and return its id; validate first."""
    stmt, params = _statement(event, table, registry, max_bytes)
    try:
        return _id(session.execute(stmt, params).scalar_one())
    except DBAPIError as e:
        raise outbox.translate(e.orig or e, event, table) from None


async def emit_async(
    session: AsyncTarget,
    event: outbox.Event,
    *,
    table: str = outbox.DEFAULT_TABLE,
    registry: Registry | None = None,
    max_bytes: int | None = None,
) -> UUID:
    """Insert `event` in the async session's transaction and return its id; validate first."""
    stmt, params = _statement(event, table, registry, max_bytes)
    try:
        result = await session.execute(stmt, params)
    except DBAPIError as e:
        raise outbox.translate(e.orig or e, event, table) from None
    return _id(result.scalar_one())
