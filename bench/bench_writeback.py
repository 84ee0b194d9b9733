"""The relay's write-back UPDATE on the outbox as 001 made it vs as 005 leaves it (issue 3).

Before 005 a partial index on `status` and full pages make every write-back a non-HOT
update (new index entries, more WAL); after 005 it is updated in place. Same machine, same
run, same rows; the UPDATE is the relay's own (cdc.pipeline.writeback), in batches of 500.

    .venv/bin/python -m bench.bench_writeback [--rows 200000]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import psycopg

from cdc.pg import migrate
from cdc.pipeline.marks import configure, id_list, mark_published
from cdc.settings import SQL_DIR
from devkit.localservers import LocalPostgres

BEFORE_005 = (
    "ALTER TABLE t_outbox SET (fillfactor = 100)",
    "CREATE INDEX ON t_outbox (created_at) WHERE status = 'PENDING'",
)
FILL = (
    "INSERT INTO t_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)"
    " SELECT 'tenant-1', 'case', 'case-' || g, 'CASE_CREATED', jsonb_build_object('case_id',"
    " 'case-' || g, 'status', 'OPEN', 'idempotency_key', 'k' || g)"
    " FROM generate_series(1, %s) g"
)


def fillfactor(conn: psycopg.Connection[Any]) -> int:
    """Return event_outbox's fillfactor (LIKE does not copy storage parameters)."""
    row = conn.execute(
        "SELECT option_value FROM pg_class, pg_options_to_table(reloptions)"
        " WHERE oid = 'event_outbox'::regclass AND option_name = 'fillfactor'"
    ).fetchone()
    return int(row[0]) if row else 100


def measure(dsn: str, rows: int, *, before_005: bool) -> dict[str, float]:
    """Fill a copy of event_outbox, mark every row published; return rate, WAL, HOT share."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS t_outbox")
        conn.execute("CREATE TABLE t_outbox (LIKE event_outbox INCLUDING ALL)")
        conn.execute(f"ALTER TABLE t_outbox SET (fillfactor = {fillfactor(conn)})")
        if before_005:
            for stmt in BEFORE_005:
                conn.execute(stmt)
        conn.execute(FILL, (rows,))
        ids = [r[0] for r in conn.execute("SELECT id::text FROM t_outbox ORDER BY created_at")]
        conn.execute("CHECKPOINT")
        start_lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]  # type: ignore[index]
        update = mark_published("public.t_outbox")
        configure(conn)  # the relay's write-back session
        t0 = time.perf_counter()
        for i in range(0, len(ids), 500):
            conn.execute(update, (id_list(ids[i : i + 500]),))
        seconds = time.perf_counter() - t0
        wal = conn.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::float8", (start_lsn,)
        ).fetchone()[0]  # type: ignore[index]
        conn.execute("SELECT pg_stat_force_next_flush()")
        time.sleep(0.6)
        upd, hot = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 't_outbox'"
        ).fetchone()  # type: ignore[misc]
        conn.execute("DROP TABLE t_outbox")
    return {"rate": rows / seconds, "wal_mb": wal / 1e6, "hot": hot / max(upd, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=200_000)
    args = ap.parse_args()
    with LocalPostgres() as pg:
        migrate.apply(pg.dsn, SQL_DIR)
        before = measure(pg.dsn, args.rows, before_005=True)
        after = measure(pg.dsn, args.rows, before_005=False)
    for name, res in (("before 005", before), ("after 005", after)):
        print(
            f"{name}: {res['rate']:,.0f} rows/s, WAL {res['wal_mb']:.1f} MB,"
            f" HOT {100 * res['hot']:.1f}% of updates",
            flush=True,
        )
    print(
        f"after/before: {after['rate'] / before['rate']:.2f}x the rate,"
        f" {after['wal_mb'] / before['wal_mb']:.2f}x the WAL"
    )


if __name__ == "__main__":
    main()
