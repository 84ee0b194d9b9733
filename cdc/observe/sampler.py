"""Refresh the gauges that need a query (pending rows, slot lag, DLQ depth) off the hot path."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import redis
from psycopg import sql

from cdc.errors import CdcError
from cdc.observe.metrics import Metrics
from cdc.pg import db, slots
from cdc.settings import Settings
from cdc.streams import groups, keys, redisconn, redisstate

log = logging.getLogger(__name__)
PENDING_WINDOW = timedelta(seconds=60)


class Sampler(threading.Thread):
    """Every `interval` seconds, read gauges from PostgreSQL and Redis; never raise.

    The two sources are sampled apart: Redis down leaves the PostgreSQL gauges (slot lag,
    pending) true, and the other way round. A failed sample counts in
    core_relay_sampler_errors_total{source} and logs a warning when a run of failures begins.
    A standby relay samples too, so one running relay shows an outage of the other.
    On a Redis Cluster each stream is read on its own master (redisconn.open_client).
    """

    def __init__(
        self, settings: Settings, metrics: Metrics, stop: threading.Event, *, interval: float = 5.0
    ) -> None:
        super().__init__(name="cdc-sampler", daemon=True)
        self._s = settings
        self._m = metrics
        self._stop_event = stop
        self._interval = interval
        self._streams = settings.router.streams()
        self._failing: set[str] = set()
        self._cluster: bool | None = None

    def run(self) -> None:
        """Sample at once, then every interval until stopped."""
        while True:
            self.sample()
            if self._stop_event.wait(self._interval):
                return

    def sample(self) -> None:
        """Take one sample of every gauge, each source on its own."""
        self._guard("postgres", self.sample_postgres)
        self._guard("redis", self.sample_redis)

    def _guard(self, source: str, step: Callable[[], None]) -> None:
        try:
            step()
        except (psycopg.Error, redis.RedisError, OSError, CdcError) as e:
            self._m.sampler_errors.labels(source).inc()
            if source not in self._failing:
                self._failing.add(source)
                log.warning("metrics: cannot sample %s (gauges keep their last value): %s",
                            source, " ".join(str(e).split()))
            return
        if source in self._failing:
            self._failing.discard(source)
            log.info("metrics: sampling %s again", source)

    def sample_redis(self) -> None:
        """Read DLQ depth, stream lengths, consumer-group lag and pending from Redis."""
        url = self._s.redis_url
        if self._cluster is None:  # asked once: a Redis does not turn into a cluster
            self._cluster = redisconn.is_cluster(url, timeout=2)
        with contextlib.closing(
            redisconn.open_client(url, timeout=2, decode=False, cluster=self._cluster)
        ) as r:
            self._m.dlq_depth.set(int(r.xlen(keys.DLQ)))
            for stream in self._streams:
                if not r.exists(stream):
                    continue
                self._m.stream_length.labels(stream).set(int(r.xlen(stream)))
                for g in groups.group_infos(r, stream):
                    self._m.group_pending.labels(stream, g.name).set(g.pending)
                    if g.lag is not None:  # Redis >= 7 reports it; None when it cannot tell
                        self._m.group_lag.labels(stream, g.name).set(g.lag)

    def sample_postgres(self) -> None:
        """Read slot lag, whether the slot is held, and PENDING rows from PostgreSQL."""
        with db.connect(self._s.database_url, autocommit=True, connect_timeout=2) as conn:
            conn.execute("SET statement_timeout = '2s'")
            st = slots.status(conn, self._s.slot)
            if st is not None and st.lag_bytes is not None:
                self._m.slot_lag_bytes.set(st.lag_bytes)
            self._m.slot_active.set(1 if st is not None and st.active else 0)
            if self._s.mark_published:
                count, age = pending(conn, self._s.outbox_table)
                self._m.pending.set(count)
                self._m.pending_age.set(age)
            # Cleared by `cdc replay --ack-reset` without a relay restart, raised by either relay.
            with contextlib.suppress(psycopg.errors.UndefinedTable):  # before migration 006
                reset = redisstate.unacknowledged(conn, self._s.slot)
                self._m.redis_reset.set(1 if reset else 0)


def count_pending(conn: psycopg.Connection[Any], table: str) -> int:
    """Count PENDING rows created after the newest PUBLISHED one, less PENDING_WINDOW."""
    return pending(conn, table)[0]


def pending(conn: psycopg.Connection[Any], table: str) -> tuple[int, float]:
    """Count PENDING rows created after the newest PUBLISHED one, less PENDING_WINDOW,
    and return the age in seconds of the oldest of them (0 when none).

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
    row = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
            " FROM {} WHERE status = 'PENDING' AND created_at > %s"
        ).format(ident),
        (bound,),
    ).fetchone()
    return (int(row[0]), max(0.0, float(row[1]))) if row else (0, 0.0)
