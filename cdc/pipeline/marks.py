"""Marking rows PUBLISHED: the one UPDATE, the visibility fence, and the Markers without a thread.

`mark_published` is the statement every path marks with: the write-back thread
(writeback.py), the backfill (MarkNow, in its own transaction) and a DLQ replay
(ops/dlq.py, from DEAD_LETTER). Unmarked is the Marker when CDC_MARK_PUBLISHED is off.
"""

from __future__ import annotations

from psycopg import sql

from cdc.pg import db

_MARK = (
    "UPDATE {} SET status = 'PUBLISHED', published_at = now()"
    " WHERE id = ANY(string_to_array(%s, ',')::uuid[]) AND status IN ({})"
)
UNPUBLISHED = ("PENDING", "FAILED")  # what the relay marks; a DLQ replay marks DEAD_LETTER


def mark_published(table: str, *, from_status: tuple[str, ...] = UNPUBLISHED) -> sql.Composed:
    """Return the one UPDATE that marks rows PUBLISHED; its parameter is `id_list(ids)`.

    Only rows in `from_status` change: a replayed batch leaves final rows alone. The ids
    travel as one comma-separated text: dumping a Python list as an array costs the relay
    ~1 µs an id, the join almost nothing.
    """
    return sql.SQL(_MARK).format(
        db.table_ident(table), sql.SQL(", ").join(map(sql.Literal, from_status))
    )


def missing_after_mark(table: str) -> sql.Composed:
    """Return the UPDATE of `mark_published` that also returns the ids it could not see.

    Its parameter is `id_list(ids)` twice. One statement, so one snapshot: a row it does not
    return was visible, and is now PUBLISHED (or already was, or is DEAD_LETTER).
    """
    t = db.table_ident(table)
    return sql.SQL(
        "WITH marked AS ({} RETURNING 1)"
        " SELECT w.id::text FROM unnest(string_to_array(%s, ',')::uuid[]) AS w(id)"
        " WHERE NOT EXISTS (SELECT 1 FROM {} o WHERE o.id = w.id)"
    ).format(mark_published(table), t)


# Whether every transaction below a fence (`take_fence`) has ended: then a commit decoded
# before the fence was taken is visible to every new snapshot.
FENCE_PASSED_SQL = "SELECT pg_snapshot_xmin(pg_current_snapshot()) > %s::text::xid8"


def take_fence(conn: db.Conn) -> str:
    """Return a new transaction id: above that of every commit decoded so far.

    Its commit is local only, so a synchronous standby that never answers cannot hold it.
    """
    with conn.transaction():
        conn.execute("SET LOCAL synchronous_commit = local")
        row = conn.execute("SELECT pg_current_xact_id()::text").fetchone()
    assert row is not None
    return str(row[0])


def id_list(ids: list[str]) -> str:
    """Return `ids` (uuids, never holding a comma) as the parameter of `mark_published`."""
    return ",".join(ids)


def bookkeeping(conn: db.Conn) -> None:
    """Let the relay's own writes (marks, dead letters, its records) commit locally.

    A synchronous standby that never answers must not hold the relay: a mark lost in a
    failover is written again (delivery across a PostgreSQL failover is at-least-once).
    """
    conn.execute("SET synchronous_commit = local")


def configure(conn: db.Conn) -> None:
    """Set up a session that runs only the write-back UPDATE."""
    bookkeeping(conn)
    conn.execute("SET statement_timeout = '30s'")
    # Steer the UPDATE from a plain index scan, which visits the rows in id order (random
    # heap pages), to a bitmap scan of the primary key, which visits them in heap order:
    # on a 200k-row outbox, 3.6 against 4.0 us a row for 500 ids. On a large analysed
    # table the planner picks the bitmap scan itself. Only plain index scans are disabled,
    # so a plan never ends up costed at the 1e10 penalty (which would also switch on JIT).
    conn.execute("SET enable_indexscan = off")


class Unmarked:
    """The Marker when CDC_MARK_PUBLISHED is off: nothing to mark, every ack is safe."""

    def submit(self, ids: list[str], confirm_lsn: int) -> None:
        """Mark nothing."""

    def safe(self, confirmed: int) -> int:
        """Return `confirmed`."""
        return confirmed

    def flush(self, timeout: float) -> None:
        """Wait for nothing."""


class MarkNow:
    """The Marker of the backfill: mark a batch at once, in the caller's transaction.

    The backfill holds its rows (FOR UPDATE) until it dequeues them in that transaction:
    a write-back on a connection of its own would wait on those locks.
    """

    def __init__(self, conn: db.Conn, *, table: str) -> None:
        self._conn = conn
        self._update = mark_published(table)

    def submit(self, ids: list[str], confirm_lsn: int) -> None:
        """Mark `ids` now."""
        if ids:
            self._conn.execute(self._update, (id_list(ids),))

    def safe(self, confirmed: int) -> int:
        """Return `confirmed`: every submitted batch is marked already."""
        return confirmed

    def flush(self, timeout: float) -> None:
        """Wait for nothing."""
