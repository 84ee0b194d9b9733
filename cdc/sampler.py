"""Refresh the gauges that need a query (pending rows, slot lag, DLQ depth) off the hot path."""

from __future__ import annotations

import contextlib
import logging
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
from psycopg import sql

from cdc import db, keys, redisconn
from cdc.metrics import Metrics
from cdc.route import Router
from cdc.settings import Settings

log = logging.getLogger(__name__)
PENDING_WINDOW = timedelta(seconds=60)


class Sampler(threading.Thread):
    """Every `interval` seconds, read gauges from PostgreSQL and Redis; never raise."""

    def __init__(
        self, settings: Settings, metrics: Metrics, stop: threading.Event, *, interval: float = 5.0
    ) -> None:
        super().__init__(name="cdc-sampler", daemon=True)
        self._s = settings
        self._m = metrics
        self._stop_event = stop
        self._interval = interval
        self._streams = Router(settings.routes).streams()

    def run(self) -> None:
        """Sample until stopped."""
        while not self._stop_event.wait(self._interval):
            try:
                self.sample()
            except (psycopg.Error, redis.RedisError, OSError) as e:
                log.debug("metrics sample failed: %s", e)

    def sample(self) -> None:
        """Take one sample of every gauge."""
        with contextlib.closing(
            redisconn.client(self._s.redis_url.get_secret_value(), timeout=2, decode=False)
        ) as r:
            self._m.dlq_depth.set(int(r.xlen(keys.DLQ)))
            for stream in self._streams:
                if not r.exists(stream):
                    continue
                for g in r.xinfo_groups(stream):
                    name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
                    lag = g.get("lag")
                    self._m.group_pending.labels(stream, name).set(int(g["pending"]))
                    if lag is not None:  # Redis >= 7 reports it; None when it cannot tell
                        self._m.group_lag.labels(stream, name).set(int(lag))
        with psycopg.connect(
            self._s.database_url.get_secret_value(), autocommit=True, connect_timeout=2
        ) as conn:
            conn.execute("SET statement_timeout = '2s'")
            row = conn.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint"
                " FROM pg_replication_slots WHERE slot_name = %s", (self._s.slot,)
            ).fetchone()
            if row and row[0] is not None:
                self._m.slot_lag_bytes.set(int(row[0]))
            if self._s.mark_published:
                self._m.pending.set(count_pending(conn, self._s.outbox_table))


def count_pending(conn: psycopg.Connection[Any], table: str) -> int:
    """Count PENDING rows created after the newest PUBLISHED one, less PENDING_WINDOW.

    No index mentions `status` (005: it would keep the write-back from being a HOT
    update), so both steps walk the created_at index: the newest rows back to the
    first PUBLISHED one, then the rows since that bound; O(pending) either way.
    Rows are published in commit order, so an older PENDING row belongs to a
    transaction that ran longer than the window; `cdc status` counts every row.
    """
    ident = db.table_ident(table)
    row = conn.execute(
        sql.SQL(
            "SELECT created_at FROM {} WHERE status = 'PUBLISHED' ORDER BY created_at DESC LIMIT 1"
        ).format(ident)
    ).fetchone()
    bound = row[0] - PENDING_WINDOW if row else datetime.min.replace(tzinfo=UTC)
    count = conn.execute(
        sql.SQL("SELECT count(*) FROM {} WHERE status = 'PENDING' AND created_at > %s").format(
            ident
        ),
        (bound,),
    ).fetchone()
    return int(count[0]) if count else 0
