"""What every store shares: the pool type, the transaction helper, id parsing, and the
outbox events of stores whose state changes other contexts follow."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias
from uuid import UUID

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import ConnectionPool, PoolTimeout

from cdc.domain import outbox
from cdc.errors import StoreError
from cdc.pipeline.contracts import Registry

Conn: TypeAlias = psycopg.Connection[Any]
Pool: TypeAlias = ConnectionPool[Conn]


@contextmanager
def transaction(pool: Pool, conn: Conn | None = None) -> Iterator[Conn]:
    """Yield a connection in a transaction: the caller's (`conn`) or a new one from `pool`."""
    try:
        if conn is not None:
            idle = conn.info.transaction_status == TransactionStatus.IDLE
            if conn.autocommit and idle:
                raise StoreError(
                    "the connection passed in is in autocommit mode outside a transaction",
                    hint="wrap the call in `with conn.transaction():`",
                )
            yield conn
            return
        with pool.connection() as own, own.transaction():
            yield own
    except PoolTimeout as e:
        raise StoreError(
            f"no database connection available: {e}", hint="check CDC_DATABASE_URL and pool size"
        ) from None
    except psycopg.OperationalError as e:
        raise StoreError(f"database unavailable: {e}", hint="check that PostgreSQL is up") from None
    except psycopg.Error as e:
        raise StoreError(f"database refused the operation: {e}") from None


def as_uuid(value: UUID | str, what: str) -> UUID:
    """Return `value` as a UUID, or raise StoreError naming `what`."""
    if isinstance(value, UUID):
        return value
    try:
        return UUID(str(value))
    except ValueError:
        raise StoreError(f"{what} {value!r} is not a valid id (expected a UUID)") from None


class EventStore:
    """A store whose state changes go out through the outbox in the same transaction."""

    def __init__(
        self, pool: Pool, *, outbox_table: str = outbox.DEFAULT_TABLE,
        registry: Registry | None = None,
    ) -> None:
        self._pool = pool
        self._outbox_table = outbox_table
        self._registry = registry or Registry()

    def _publish(self, c: Conn, event: outbox.Event) -> None:
        """Insert `event` into the outbox on `c`, checked against its contract."""
        outbox.emit(c, event, table=self._outbox_table, registry=self._registry)
