"""005 keeps the write-back cheap; the pending gauge works without the PENDING index."""

from __future__ import annotations

import psycopg

from cdc.observe.sampler import count_pending
from cdc.pipeline.marks import configure, id_list, mark_published

INSERT = (
    "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload,"
    " created_at) SELECT 't1', 'case', 'case-' || g, 'CASE_CREATED',"
    " jsonb_build_object('case_id', 'case-' || g, 'status', 'OPEN', 'note', repeat('x', 40)),"
    " now() - %s::interval FROM generate_series(1, %s) g RETURNING id::text"
)


def add(conn: psycopg.Connection[tuple[str]], n: int, age: str = "0 s") -> list[str]:
    return [r[0] for r in conn.execute(INSERT, (age, n)).fetchall()]


def test_write_back_is_a_hot_update_touching_no_index(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ids = add(conn, 2000)
        with conn.transaction():
            conn.execute(mark_published("public.event_outbox"), (id_list(ids),))
            row = conn.execute(
                "SELECT pg_stat_get_xact_tuples_updated('event_outbox'::regclass),"
                " pg_stat_get_xact_tuples_hot_updated('event_outbox'::regclass)"
            ).fetchone()
        assert row is not None and row[0] == 2000
        # In place, no new index entries; the published version is ~10 bytes longer, so a
        # page of very small rows can run out of room for the last few.
        assert row[1] >= 0.99 * 2000, row
        published = conn.execute(
            "SELECT count(*) FROM event_outbox WHERE status = 'PUBLISHED'"
            " AND published_at IS NOT NULL"
        ).fetchone()
        assert published == (2000,)


def test_write_back_session_plans_a_bitmap_scan_of_the_primary_key(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ids = add(conn, 3000)
        conn.execute("ANALYZE event_outbox")
        update = "EXPLAIN " + mark_published("public.event_outbox").as_string(conn)

        def plan(n: int) -> str:
            return "\n".join(r[0] for r in conn.execute(update, (id_list(ids[:n]),)))

        assert "Index Scan using event_outbox_pkey" in plan(1)  # the planner's own choice
        configure(conn)
        for n in (1, 20):  # more ids of a 3,000-row table: a full scan is cheaper, and chosen
            assert "Bitmap Index Scan on event_outbox_pkey" in plan(n), plan(n)[:300]
        conn.execute("DELETE FROM event_outbox")


def test_pending_gauge_counts_rows_newer_than_the_published_ones(pg_dsn: str) -> None:
    table = "public.event_outbox"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert count_pending(conn, table) == 0
        add(conn, 7, "2 hours")  # nothing published yet: every PENDING row counts
        assert count_pending(conn, table) == 7
        conn.execute(mark_published(table), (id_list(add(conn, 50, "10 min")),))
        add(conn, 12)  # the relay's backlog
        add(conn, 3, "10 min 30 s")  # a transaction that ran 30 s: inside the 60 s window
        assert count_pending(conn, table) == 15
        # Older PENDING rows beside newer PUBLISHED ones (a transaction that ran longer
        # than the window, rows from a write-back-off period) are left to `cdc status`.
        statuses = dict(conn.execute("SELECT status, count(*) FROM event_outbox GROUP BY 1"))
        assert statuses == {"PENDING": 22, "PUBLISHED": 50}
