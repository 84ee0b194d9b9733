"""`cdc prune`: outbox retention: delete PUBLISHED rows older than a cutoff, in small batches.

Each batch is its own short transaction that locks only the rows it deletes
(`FOR UPDATE SKIP LOCKED`), under a short `lock_timeout`, so producers and the relay
never queue behind it. Each batch starts its index walk where the previous one ended, so
the index entries of rows already deleted (dead until vacuum) are not rescanned.
bench/bench_prune.py measures this against dropping daily partitions (bench/RESULTS.md).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from cdc.errors import SourceError
from cdc.pg import db
from cdc.settings import Settings


@dataclass(slots=True)
class PruneResult:
    """What a prune did (or, with dry_run, would do)."""

    cutoff: datetime
    deleted: int = 0
    batches: int = 0
    seconds: float = 0.0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Return the result as JSON-ready values."""
        d = asdict(self)
        d["cutoff"] = self.cutoff.isoformat()
        return d


def prune(
    conn: db.Conn, settings: Settings, *, older_than: timedelta, batch_size: int = 5000,
    pause_s: float = 0.0, dry_run: bool = False, stop: threading.Event | None = None,
) -> PruneResult:
    """Delete PUBLISHED outbox rows created before now() - `older_than`."""
    table = db.table_ident(settings.outbox_table)
    row = conn.execute("SELECT now() - %s::interval", (older_than,)).fetchone()
    assert row is not None
    result = PruneResult(cutoff=row[0], dry_run=dry_run)
    if dry_run:
        n = conn.execute(
            sql.SQL(
                "SELECT count(*) FROM {} WHERE status = 'PUBLISHED' AND created_at < %s"
            ).format(table),
            (result.cutoff,),
        ).fetchone()
        result.deleted = int(n[0]) if n else 0
        return result
    batch = sql.SQL(
        "WITH doomed AS (SELECT id FROM {t} WHERE status = 'PUBLISHED'"
        " AND created_at >= %(start)s::timestamptz AND created_at < %(cutoff)s"
        " ORDER BY created_at LIMIT %(n)s FOR UPDATE SKIP LOCKED),"
        " gone AS (DELETE FROM {t} o USING doomed d WHERE o.id = d.id RETURNING o.created_at)"
        " SELECT count(*), max(created_at) FROM gone"
    ).format(t=table)
    params: dict[str, Any] = {"start": "-infinity", "cutoff": result.cutoff, "n": batch_size}
    started = time.monotonic()
    conn.execute("SET lock_timeout = '2s'")
    while stop is None or not stop.is_set():
        try:
            with conn.transaction():
                got = conn.execute(batch, params).fetchone()
        except psycopg.errors.LockNotAvailable as e:
            raise SourceError(
                f"prune gave up waiting for a lock on {settings.outbox_table}: {e}",
                hint="a migration or VACUUM FULL holds the table; run `cdc prune` again later",
            ) from None
        if not got or not got[0]:
            break
        result.deleted += int(got[0])
        result.batches += 1
        params["start"] = got[1]
        if pause_s:
            time.sleep(pause_s)
    result.seconds = round(time.monotonic() - started, 3)
    return result
