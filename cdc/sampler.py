"""Refresh the gauges that need a query (pending rows, slot lag, DLQ depth) off the hot path."""

from __future__ import annotations

import contextlib
import logging
import threading

import psycopg
import redis
from psycopg import sql

from cdc import db, keys
from cdc.metrics import Metrics
from cdc.route import Router
from cdc.settings import Settings

log = logging.getLogger(__name__)


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
        self._pending = sql.SQL("SELECT count(*) FROM {} WHERE status = 'PENDING'").format(
            db.table_ident(settings.outbox_table)
        )

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
            redis.Redis.from_url(self._s.redis_url.get_secret_value(), socket_timeout=2)
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
                pending = conn.execute(self._pending).fetchone()
                if pending:
                    self._m.pending.set(int(pending[0]))
