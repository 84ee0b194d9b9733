"""The replication stream: START_REPLICATION over psycopg 3's COPY_BOTH, driven through pgconn.

The server pushes `w` (XLogData) and `k` (keepalive) messages; we answer with `r`
(standby status) carrying the LSN that is safe to confirm. Nothing here polls.
"""

from __future__ import annotations

import select
import struct
import time
from dataclasses import dataclass

import psycopg
from psycopg import pq, sql

from cdc.errors import SlotBusy, SourceError
from cdc.pg import db

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01 in Unix microseconds
_HDR_K = struct.Struct("!QqB")
_STATUS = struct.Struct("!cQQQqB")


@dataclass(slots=True)
class Keepalive:
    """A primary keepalive: the server's WAL end, and whether it wants a reply now."""

    wal_end: int
    reply_requested: bool


def plugin_options(table: str) -> sql.Composed:
    """Return the wal2json option list: format 2, inserts on the outbox table only."""
    opts = {
        "format-version": "2",
        "add-tables": table,
        "actions": "insert",
        "include-lsn": "true",
        "include-timestamp": "true",
        "include-types": "false",
        "include-transaction": "true",
    }
    return sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(k), sql.Literal(v)) for k, v in opts.items()
    )


def replication_connect(dsn: db.Dsn) -> db.Conn:
    """Open a logical replication connection; errors become SourceError/ConfigError."""
    return db.connect(
        dsn, autocommit=True, replication="database",
        hint="the relay's role needs REPLICATION and pg_hba.conf must allow replication",
    )


class ReplicationStream:
    """A started logical replication stream on one slot."""

    def __init__(self, dsn: db.Dsn, *, slot: str, table: str) -> None:
        self._conn = replication_connect(dsn)
        # 0/0: start at the slot's confirmed_flush_lsn
        stmt = sql.SQL("START_REPLICATION SLOT {} LOGICAL 0/0 ({})").format(
            sql.Identifier(slot), plugin_options(table)
        )
        try:
            self._conn.execute(stmt)
        except psycopg.errors.ObjectInUse as e:
            self._conn.close()
            raise SlotBusy(f"replication slot {slot} is active in another session: {e}") from None
        except psycopg.errors.UndefinedObject as e:
            self._conn.close()
            raise SourceError(str(e), hint="create it with `cdc slot create`") from None
        except psycopg.Error as e:
            self._conn.close()
            raise SourceError(f"START_REPLICATION on slot {slot} failed: {e}") from None
        self._pg = self._conn.pgconn
        self.fileno = self._pg.socket

    def read(self, refill: bool = False) -> memoryview | Keepalive | None:
        """Return the next message if one is buffered, else None (never blocks).

        With `refill`, an empty buffer is first refilled with what the socket holds.
        XLogData comes back as its payload (the wal2json JSON), keepalives as Keepalive.
        """
        try:
            n, buf = self._pg.get_copy_data(1)
        except psycopg.Error as e:
            raise SourceError(f"replication stream broke: {e}") from None
        if n > 0:  # the common case first: one test per message
            kind = buf[0]
            if kind == 0x77:  # 'w': the header's positions are not needed, the JSON has them
                return buf[25:]
            if kind == 0x6B:  # 'k'
                end, _, reply = _HDR_K.unpack_from(buf, 1)
                return Keepalive(end, bool(reply))
            raise SourceError(f"unexpected replication message type {chr(kind)!r}")
        if n == 0:
            if refill:
                self.consume()
                return self.read()
            return None
        raise SourceError(f"replication stream ended: {self._error()}")

    def wait(self, timeout: float) -> None:
        """Block until the socket is readable or `timeout` passes, then take what arrived."""
        readable, _, _ = select.select([self.fileno], [], [], timeout)
        if readable:
            self.consume()

    def consume(self) -> None:
        """Take whatever the socket holds into libpq's buffer (never blocks)."""
        try:
            self._pg.consume_input()
        except psycopg.OperationalError as e:
            raise SourceError(f"replication connection lost: {e}") from None

    def send_status(self, flushed: int, *, reply: bool = False) -> None:
        """Report `flushed` as written, flushed and applied."""
        now = int(time.time() * 1_000_000) - PG_EPOCH_US
        msg = _STATUS.pack(b"r", flushed, flushed, flushed, now, 1 if reply else 0)
        try:
            self._pg.put_copy_data(msg)
            self._pg.flush()
        except psycopg.OperationalError as e:
            raise SourceError(f"replication connection lost: {e}") from None

    def _error(self) -> str:
        msg = self._pg.error_message.decode(errors="replace").strip()
        return msg or pq.ConnStatus(self._pg.status).name

    def close(self) -> None:
        """Close the connection (the slot keeps its confirmed position)."""
        self._conn.close()
