"""Write-back off the hot path: mark acknowledged rows PUBLISHED on a connection of its own.

Batches are written in the order Redis acknowledged them. `safe(confirmed)` caps the LSN
the relay may confirm at the last batch whose rows are marked, so a crash between the
Redis ack and the UPDATE replays the batch (deduplicated in Redis) and marks it then.

Logical decoding can hand over a commit before it is visible to other sessions (briefly,
or as long as a synchronous standby keeps it waiting). An UPDATE that matched fewer rows
than it named is therefore not done: the rows it could not see are owed, retried until
they are visible, and the LSN is not confirmed past them. Only a row still missing once
every transaction older than the first miss has ended was deleted; it is dropped, loudly.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cdc.errors import CdcError, SourceError
from cdc.pg import db

log = logging.getLogger(__name__)


def mark_published(table: str) -> sql.Composed:
    """Return the UPDATE that marks acknowledged rows; its parameter is `id_list(ids)`.

    The ids travel as one comma-separated text: dumping a Python list as an array costs
    the relay ~1 µs an id, the join almost nothing.
    """
    return sql.SQL(
        "UPDATE {} SET status = 'PUBLISHED', published_at = now()"
        " WHERE id = ANY(string_to_array(%s, ',')::uuid[]) AND status IN ('PENDING', 'FAILED')"
    ).format(db.table_ident(table))


def missing_after_mark(table: str) -> sql.Composed:
    """Return the UPDATE of `mark_published` that also returns the ids it could not see.

    Its parameter is `id_list(ids)` twice. One statement, so one snapshot: a row it does not
    return was visible, and is now PUBLISHED (or already was, or is DEAD_LETTER).
    """
    t = db.table_ident(table)
    return sql.SQL(
        "WITH marked AS (UPDATE {} SET status = 'PUBLISHED', published_at = now()"
        " WHERE id = ANY(string_to_array(%s, ',')::uuid[]) AND status IN ('PENDING', 'FAILED')"
        " RETURNING 1)"
        " SELECT w.id::text FROM unnest(string_to_array(%s, ',')::uuid[]) AS w(id)"
        " WHERE NOT EXISTS (SELECT 1 FROM {} o WHERE o.id = w.id)"
    ).format(t, t)


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


COALESCE_IDS = 5000  # at most this many ids in one UPDATE when batches queue up
LINGER_S = 0.01  # how long a write-back waits for more batches to join it
OWED_RETRY_S = (0.005, 0.5)  # first and longest wait between retries of owed rows
OWED_WARN_S = 10.0  # how often owed rows are reported while they stay invisible


@dataclass(slots=True)
class Owed:
    """Rows a write-back could not see yet; the LSN stays at or below `floor` until done."""

    ids: list[str]
    floor: int  # every batch before these rows is written back up to here
    fence: str  # pg_current_xact_id() when they were first missed
    since: float


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


class WriteBack:
    """A thread that marks acknowledged batches in order: one UPDATE per batch or fewer."""

    def __init__(self, dsn: str, *, table: str, start_lsn: int) -> None:
        self._update = mark_published(table)
        self._missing = missing_after_mark(table)
        self._conn = db.connect(dsn, autocommit=True)
        configure(self._conn)
        self._queue: queue.Queue[tuple[list[str], int] | None] = queue.Queue(maxsize=64)
        self._cond = threading.Condition()
        self._pending = 0
        self._done_lsn = start_lsn
        self._owed: list[Owed] = []
        self._warned = 0.0
        self.dropped = 0  # rows deleted before they could be marked
        self.error: CdcError | None = None
        self._thread = threading.Thread(target=self._run, name="cdc-writeback", daemon=True)
        self._thread.start()

    def submit(self, ids: list[str], confirm_lsn: int) -> None:
        """Queue a batch's ids; its LSN becomes safe once they are marked."""
        self.check()
        with self._cond:
            self._pending += 1
        while True:  # a full queue means the thread is behind: wait, but notice if it died
            try:
                self._queue.put((ids, confirm_lsn), timeout=0.5)
                return
            except queue.Full:
                self.check()

    def safe(self, confirmed: int) -> int:
        """Return the highest LSN that is both acknowledged and written back."""
        self.check()
        with self._cond:
            safe = confirmed if self._pending == 0 else min(confirmed, self._done_lsn)
            return min(safe, self._owed[0].floor) if self._owed else safe

    @property
    def owed(self) -> int:
        """Return how many acknowledged rows wait to become visible."""
        with self._cond:
            return sum(len(o.ids) for o in self._owed)

    def check(self) -> None:
        """Raise the write-back's error, if any (the session restarts and replays)."""
        if self.error is not None:
            raise self.error

    def flush(self, timeout: float) -> None:
        """Wait until every queued batch is written back (or `timeout` passes)."""
        with self._cond:
            self._cond.wait_for(lambda: self._pending == 0 or self.error is not None, timeout)
        self.check()

    def _run(self) -> None:
        stopping, wait = False, OWED_RETRY_S[0]
        try:
            while not stopping:
                try:
                    item = self._queue.get(timeout=wait if self._owed else None)
                except queue.Empty:
                    self._retry_owed()
                    wait = min(wait * 2, OWED_RETRY_S[1])
                    continue
                if item is None:
                    return
                ids, lsn, count, stopping = self._gather(item)
                self._write(ids, lsn, count)
                if self._owed:
                    self._retry_owed()
                    wait = OWED_RETRY_S[0]
        except Exception as e:  # any failure must reach the relay loop
            err = db.translate(e, "write-back") if isinstance(e, psycopg.Error) else None
            with self._cond:
                self.error = err or SourceError(
                    f"write-back failed: {' '.join(str(e).split()) or type(e).__name__}"
                )
                self._cond.notify_all()

    def _write(self, ids: list[str], lsn: int, count: int) -> None:
        """Mark `ids`; owe the ones not yet visible; then count the batches as written."""
        floor = self._done_lsn
        if ids and self._conn.execute(self._update, (id_list(ids),)).rowcount < len(ids):
            # Fewer rows than named: some already final (a replay), or not yet visible.
            unseen = self._unseen(ids)
            if unseen:
                fence = take_fence(self._conn)
                with self._cond:
                    self._owed.append(Owed(unseen, floor, fence, time.monotonic()))
        with self._cond:
            self._done_lsn = max(self._done_lsn, lsn)
            self._pending -= count
            self._cond.notify_all()

    def _unseen(self, ids: list[str]) -> list[str]:
        """Mark what is visible of `ids`; return the ids this snapshot could not see."""
        text = id_list(ids)
        return [str(r[0]) for r in self._conn.execute(self._missing, (text, text))]

    def _retry_owed(self) -> None:
        """Mark owed rows that became visible; drop the ones deleted; warn while some wait."""
        keep = []
        for owed in list(self._owed):
            passed = bool(
                self._conn.execute(FENCE_PASSED_SQL, (owed.fence,)).fetchone()[0]  # type: ignore[index]
            )
            owed.ids = self._unseen(owed.ids)
            if owed.ids and passed:  # its transactions ended, yet the rows are not there
                log.warning(
                    "%d acknowledged outbox row(s) were deleted before they could be marked"
                    " PUBLISHED (ids %s); their events are in Redis",
                    len(owed.ids), ", ".join(owed.ids[:5]),
                )
                self.dropped += len(owed.ids)
                owed.ids = []
            if owed.ids:
                keep.append(owed)
        with self._cond:
            self._owed = keep
            self._cond.notify_all()
        now = time.monotonic()
        if keep and now - keep[0].since > OWED_WARN_S and now - self._warned > OWED_WARN_S:
            self._warned = now
            log.warning(
                "%d published outbox row(s) are not yet visible to other sessions after %.0f s,"
                " so the slot is not confirmed past them (fix: a transaction waits after its"
                " commit, usually for a synchronous standby: SELECT pid, wait_event FROM"
                " pg_stat_activity WHERE wait_event = 'SyncRep')",
                sum(len(o.ids) for o in keep), now - keep[0].since,
            )

    def _gather(self, first: tuple[list[str], int]) -> tuple[list[str], int, int, bool]:
        """Join batches acknowledged within LINGER_S to `first`; return ids, LSN, count, stop.

        At a trickle (one event a batch) that is one UPDATE, one transaction, for many
        events: each transaction costs PostgreSQL a commit and the relay a wakeup for its
        empty begin/commit pair from wal2json. Confirming the slot waits as long.
        """
        ids, lsn, count = list(first[0]), first[1], 1
        deadline = time.monotonic() + LINGER_S
        while len(ids) < COALESCE_IDS:
            try:
                more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if more is None:  # close(): write what was gathered, then stop
                return ids, lsn, count, True
            ids += more[0]
            lsn, count = max(lsn, more[1]), count + 1
        return ids, lsn, count, False

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (after what is queued) and close its connection."""
        if self._thread.is_alive():
            with contextlib.suppress(queue.Full):
                self._queue.put(None, timeout=timeout)
            self._thread.join(timeout)
        if self._thread.is_alive():  # stuck in a statement: cancel it, never free it under it
            with contextlib.suppress(psycopg.Error):
                self._conn.cancel_safe(timeout=1.0)
            self._thread.join(1.0)
            if self._thread.is_alive():
                return
        self._conn.close()
