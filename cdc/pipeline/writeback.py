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

from cdc.errors import CdcError, SourceError
from cdc.pg import db
from cdc.pipeline.marks import (
    FENCE_PASSED_SQL,
    configure,
    id_list,
    mark_published,
    missing_after_mark,
    take_fence,
)

log = logging.getLogger(__name__)


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


class WriteBack:
    """A thread that marks acknowledged batches in order: one UPDATE per batch or fewer.

    It owns `conn` (autocommit, configured here) and closes it in `close`.
    """

    @classmethod
    def open(cls, dsn: db.Dsn, *, table: str, start_lsn: int) -> WriteBack:
        """Connect, then start the write-back on that connection."""
        conn = db.connect(dsn, autocommit=True)
        try:
            return cls(conn, table=table, start_lsn=start_lsn)
        except BaseException:
            conn.close()
            raise

    def __init__(self, conn: db.Conn, *, table: str, start_lsn: int) -> None:
        self._update = mark_published(table)
        self._missing = missing_after_mark(table)
        self._conn = conn
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
