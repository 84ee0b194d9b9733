"""The replication slot: create (with its backfill snapshot), inspect, drop."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import psycopg
from psycopg import sql

from cdc.errors import ConfigError, MigrationError, SlotBusy, SourceError
from cdc.pg import db
from cdc.pg import lsn as lsnlib
from cdc.pipeline.source import replication_connect
from cdc.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SlotStatus:
    """What `cdc slot status` shows."""

    slot_name: str
    plugin: str
    active: bool
    active_pid: int | None
    confirmed_flush_lsn: str | None
    lag_bytes: int | None
    wal_status: str | None
    safe_wal_size: int | None

    def as_dict(self) -> dict[str, Any]:
        """Return the fields as a dict."""
        return asdict(self)


def current_lsn(conn: db.Conn) -> int:
    """Return pg_current_wal_lsn() as an integer."""
    row = conn.execute("SELECT pg_current_wal_lsn()::text").fetchone()
    assert row is not None
    return lsnlib.parse(row[0])


def confirmed_lsn(conn: db.Conn, slot: str) -> int:
    """Return the slot's confirmed_flush_lsn (0 if unknown)."""
    row = conn.execute(
        "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s", (slot,)
    ).fetchone()
    if row is None:
        raise SourceError(f"replication slot {slot} does not exist", hint="cdc slot create")
    return lsnlib.parse(row[0]) if row[0] else 0


# The slot's lag: WAL bytes written since what the relay confirmed. The one copy of this SQL
# (status, doctor, the metrics sampler and the tests all read it through status()).
LAG_BYTES_SQL = "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
STATUS_SQL = (
    "SELECT slot_name, plugin, active, active_pid, confirmed_flush_lsn::text,"
    f" {LAG_BYTES_SQL}, wal_status, safe_wal_size"
    " FROM pg_replication_slots WHERE slot_name = %s"
)


def status(conn: db.Conn, slot: str) -> SlotStatus | None:
    """Return the slot's state (lag included), or None when it does not exist."""
    row = conn.execute(STATUS_SQL, (slot,)).fetchone()
    return SlotStatus(*row) if row else None


def epoch(conn: db.Conn, slot: str) -> int:
    """Return the slot's creation time in µs (0 if `cdc slot create` did not make it)."""
    row = conn.execute(
        "SELECT (extract(epoch FROM created_at) * 1000000)::bigint FROM public.cdc_slot"
        " WHERE slot_name = %s", (slot,)
    ).fetchone()
    return int(row[0]) if row else 0


def lock(conn: db.Conn, slot: str) -> None:
    """Take the session lock that makes one relay the slot's owner, or raise SlotBusy."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(hashtext('axiom-cdc slot ' || %s))", (slot,)
    ).fetchone()
    if not row or not row[0]:
        raise SlotBusy(f"another relay owns slot {slot}")


def ensure(settings: Settings) -> bool:
    """Create the slot when absent; return True if it was created now."""
    dsn = settings.database_url
    try:
        with db.connect(dsn, autocommit=True) as conn:
            if status(conn, settings.slot) is not None:
                return False
            for table in (settings.outbox_table, "public.cdc_slot"):
                row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
                if not row or row[0] is None:
                    raise MigrationError(
                        f"table {table} does not exist", hint="run `cdc migrate`"
                    )
    except psycopg.Error as e:
        raise db.translate(e, f"cannot inspect slot {settings.slot}") from None
    return create(settings, exist_ok=True) is not None


def create(settings: Settings, *, exist_ok: bool = False) -> str | None:
    """Create the slot and, under its exported snapshot, queue the PENDING rows it will not stream.

    Return the slot's consistent point (None if it existed and `exist_ok`).
    """
    dsn = settings.database_url
    rconn = replication_connect(dsn)
    try:
        try:
            row = rconn.execute(
                sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL wal2json (SNAPSHOT 'export')").format(
                    sql.Identifier(settings.slot)
                )
            ).fetchone()
        except psycopg.errors.DuplicateObject:
            if exist_ok:  # another relay created it a moment ago
                return None
            raise ConfigError(f"replication slot {settings.slot} already exists") from None
        except psycopg.errors.InsufficientPrivilege as e:
            raise ConfigError(
                f"cannot create slot {settings.slot}: {e}",
                hint="ALTER ROLE <the relay's login role> WITH REPLICATION;",
            ) from None
        except psycopg.Error as e:
            raise SourceError(
                f"cannot create slot {settings.slot}: {e}",
                hint="run `cdc doctor`: wal_level=logical, wal2json installed, free slots",
            ) from None
        assert row is not None
        consistent, snapshot = str(row[1]), str(row[2])
        try:
            with db.connect(dsn) as conn:
                _queue_backfill(conn, settings, consistent, snapshot)
        except (psycopg.Error, SourceError) as e:
            # A slot without its backfill queue would never publish the rows before it.
            rconn.close()
            _drop_quietly(dsn, settings.slot)
            what = f"cannot queue the backfill of slot {settings.slot}"
            if isinstance(e, psycopg.Error):
                raise db.translate(e, what) from None
            raise SourceError(f"{what}: {e}") from None
    finally:
        rconn.close()
    log.info("created slot %s at %s", settings.slot, consistent)
    return consistent


def _queue_backfill(conn: db.Conn, settings: Settings, consistent: str, snapshot: str) -> None:
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
        conn.execute(
            "INSERT INTO public.cdc_slot (slot_name, consistent_lsn) VALUES (%s, %s)"
            " ON CONFLICT (slot_name) DO UPDATE SET consistent_lsn = EXCLUDED.consistent_lsn,"
            " created_at = now(), backfilled_at = NULL",
            (settings.slot, consistent),
        )
        conn.execute("DELETE FROM public.cdc_backfill WHERE slot_name = %s", (settings.slot,))
        conn.execute(
            sql.SQL(
                "INSERT INTO public.cdc_backfill (slot_name, seq, event_id)"
                " SELECT %s, row_number() OVER (ORDER BY created_at, id), id FROM {}"
                " WHERE status IN ('PENDING', 'FAILED')"
            ).format(db.table_ident(settings.outbox_table)),
            (settings.slot,),
        )


def _drop_quietly(dsn: db.Dsn, slot: str) -> None:
    try:
        with db.connect(dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s", (slot,)
            )
    except (psycopg.Error, SourceError) as e:
        log.warning("could not drop half-created slot %s: %s (drop it by hand)", slot, e)


def drop(settings: Settings) -> None:
    """Drop the slot (and its backfill queue)."""
    with db.connect(settings.database_url, autocommit=True) as conn:
        try:
            conn.execute("SELECT pg_drop_replication_slot(%s)", (settings.slot,))
        except psycopg.errors.UndefinedObject:
            raise ConfigError(f"replication slot {settings.slot} does not exist") from None
        except psycopg.errors.ObjectInUse as e:
            raise SourceError(
                f"slot {settings.slot} is active: {e}", hint="stop the relay first"
            ) from None
        conn.execute("DELETE FROM public.cdc_slot WHERE slot_name = %s", (settings.slot,))
