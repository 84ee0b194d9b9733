"""Outbox retention: batched DELETE (`cdc prune`) against dropping daily partitions.

Both run against the same data (N rows over 14 days, half older than 7 days) while a writer
inserts single-row transactions as fast as it can; we report how long retention takes,
the WAL it writes (which the slot's walsender must read through), the table's size after,
and what it does to the writer's latency.

    .venv/bin/python -m bench.bench_prune [--rows 1000000]
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from datetime import timedelta
from typing import Any

import psycopg

from cdc.ops.prune import prune
from cdc.pg import migrate
from cdc.settings import SQL_DIR, Settings
from devkit.localservers import LocalPostgres

FILL = """
INSERT INTO {t} (tenant_id, aggregate_type, aggregate_id, event_type, payload, status,
                 created_at, published_at)
SELECT 't' || (g %% 50), 'case', 'c' || g, 'CASE_CREATED',
       jsonb_build_object('case_id', 'c' || g, 'status', 'OPEN', 'idempotency_key', 'k' || g),
       'PUBLISHED', now() - interval '14 days' * (1 - g::float8 / %(n)s),
       now() - interval '14 days' * (1 - g::float8 / %(n)s)
FROM generate_series(1, %(n)s) g
"""
INSERT = (
    "INSERT INTO {t} (tenant_id, aggregate_type, aggregate_id, event_type, payload)"
    " VALUES ('t1', 'case', 'w', 'CASE_CREATED', '{{\"case_id\": \"w\", \"status\": \"OPEN\"}}')"
)
PARTITIONED = """
CREATE TABLE outbox_part (LIKE public.event_outbox INCLUDING DEFAULTS INCLUDING CONSTRAINTS)
    PARTITION BY RANGE (created_at);
ALTER TABLE outbox_part ADD PRIMARY KEY (id, created_at);
CREATE INDEX ON outbox_part (created_at);
"""


class Writer(threading.Thread):
    """Insert one row per transaction until stopped; record each commit's latency."""

    def __init__(self, dsn: str, table: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.sql = dsn, INSERT.format(t=table)
        self.stop = threading.Event()
        self.lat: list[float] = []
        self.window: tuple[int, int] = (0, 0)

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                t = time.perf_counter()
                conn.execute(self.sql)
                self.lat.append(time.perf_counter() - t)

    def mark(self) -> int:
        return len(self.lat)


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))] * 1000 if xs else 0.0


def size(conn: psycopg.Connection[Any], table: str) -> int:
    """Return the bytes of `table` with its indexes (and partitions)."""
    row = conn.execute(
        "SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(%s)),"
        " pg_total_relation_size(%s))::bigint", (table, table),
    ).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def measure(dsn: str, table: str, work: Any) -> dict[str, Any]:
    """Run `work(conn)` while a writer inserts; return timings, WAL, sizes, writer latency."""
    writer = Writer(dsn, table)
    writer.start()
    time.sleep(2.0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        base = writer.lat[writer.mark() // 2:]
        size0 = size(conn, table)
        wal0 = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        start_i, t0 = writer.mark(), time.perf_counter()
        done = work(conn)
        secs = time.perf_counter() - t0
        during = writer.lat[start_i:writer.mark()]
        wal = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::bigint", (wal0,)
        ).fetchone()[0]  # type: ignore[index]
        writer.stop.set()
        writer.join()
        size1 = size(conn, table)
        conn.execute(f"VACUUM {table}")
        size2 = size(conn, table)
    return {
        "rows_removed": done, "seconds": round(secs, 2),
        "rows_per_s": round(done / secs) if secs else 0, "wal_mb": round(wal / 2**20, 1),
        "size_before_mb": round(size0 / 2**20), "size_after_mb": round(size1 / 2**20),
        "size_after_vacuum_mb": round(size2 / 2**20),
        "writer_p50_ms_idle": round(pct(base, 0.5), 2),
        "writer_p99_ms_idle": round(pct(base, 0.99), 2),
        "writer_p50_ms": round(pct(during, 0.5), 2), "writer_p99_ms": round(pct(during, 0.99), 2),
        "writer_max_ms": round(max(during) * 1000, 1) if during else 0.0,
        "writer_tx_per_s": round(len(during) / secs) if secs else 0,
        "writer_mean_ms": round(statistics.fmean(during) * 1000, 2) if during else 0.0,
    }


def batched(dsn: str, rows: int) -> dict[str, Any]:
    settings = Settings(database_url=dsn)  # type: ignore[arg-type]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(FILL.format(t="public.event_outbox"), {"n": rows})
        conn.execute("VACUUM ANALYZE public.event_outbox")

    def work(conn: psycopg.Connection[Any]) -> int:
        return prune(conn, settings, older_than=timedelta(days=7), batch_size=5000).deleted

    return measure(dsn, "public.event_outbox", work)


def partitions(dsn: str, rows: int) -> dict[str, Any]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(PARTITIONED)
        for d in range(-15, 2):
            conn.execute(
                f"CREATE TABLE outbox_p{d + 15:02d} PARTITION OF outbox_part FOR VALUES FROM"
                f" (date_trunc('day', now()) + interval '{d} days')"
                f" TO (date_trunc('day', now()) + interval '{d + 1} days')"
            )
        conn.execute(FILL.format(t="outbox_part"), {"n": rows})
        conn.execute("VACUUM ANALYZE outbox_part")

    def work(conn: psycopg.Connection[Any]) -> int:
        old = conn.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'outbox_part'::regclass"
            " AND pg_get_expr(c.relpartbound, c.oid) ~ 'FROM' ORDER BY c.relname"
        ).fetchall()
        removed = 0
        for (name,) in old:
            hi = conn.execute(
                f"SELECT max(created_at) < now() - interval '7 days', count(*) FROM {name}"
            ).fetchone()
            if not hi or not hi[0]:
                continue  # only partitions entirely older than the cutoff are dropped
            removed += int(hi[1])
            conn.execute(f"ALTER TABLE outbox_part DETACH PARTITION {name} CONCURRENTLY")
            conn.execute(f"DROP TABLE {name}")
        return removed

    return measure(dsn, "outbox_part", work)


def main() -> None:
    """Run both strategies on a throwaway cluster and print a Markdown table."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with LocalPostgres() as pg:
        migrate.apply(pg.dsn, SQL_DIR)
        results = {"batched DELETE (cdc prune, 5000/batch)": batched(pg.dsn, args.rows),
                   "DETACH CONCURRENTLY + DROP of daily partitions": partitions(pg.dsn, args.rows)}
    keys = list(next(iter(results.values())))
    print("| metric | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(r[k]) for r in results.values()) + " |")


if __name__ == "__main__":
    main()
