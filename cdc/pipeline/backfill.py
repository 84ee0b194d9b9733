"""One-shot catch-up: the PENDING rows that predate the slot, before the stream rules.

The rows were queued in `cdc_backfill` under the slot's exported snapshot, so none of
them is also in the stream. `batches` yields them in created_at order, each batch inside
its own transaction that holds its rows (`SELECT ... FOR UPDATE`); the caller publishes
and marks it (session.py: the same Publisher and Marker steps as the stream) before asking
for the next, which dequeues it in that transaction. Deduplicated in Redis under the keys
(slot epoch, consistent point - 1, seq), which sort below every streamed event of that slot.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from psycopg import sql

from cdc.errors import SourceError
from cdc.pg import db
from cdc.pg import lsn as lsnlib
from cdc.pipeline.checkpoint import Batch
from cdc.pipeline.decode import OutboxEvent, dedup_key
from cdc.settings import Settings

log = logging.getLogger(__name__)


def batches(settings: Settings, conn: db.Conn, *, epoch: int) -> Iterator[Batch]:
    """Yield the slot's queued pre-slot rows in batches; publish each before the next.

    A batch's transaction stays open while it is out: an error in the caller (or closing
    the generator early) rolls it back and leaves its rows queued for the next session.
    """
    row = conn.execute(
        "SELECT consistent_lsn::text, backfilled_at IS NOT NULL FROM public.cdc_slot"
        " WHERE slot_name = %s", (settings.slot,)
    ).fetchone()
    if row is None:
        log.warning(
            "slot %s was not created by `cdc slot create`: PENDING rows older than the slot"
            " are not backfilled (fix: stop the relay, `cdc slot drop --yes`, `cdc slot create`)",
            settings.slot,
        )
        return
    if row[1]:
        return
    base = lsnlib.parse(row[0]) - 1
    select = sql.SQL(
        "SELECT b.seq, o.id::text, o.tenant_id, o.aggregate_type, o.aggregate_id, o.event_type,"
        " o.payload::text, o.created_at::text, to_jsonb(o)->>'traceparent',"
        " to_jsonb(o)->>'tracestate'"  # NULL also on an outbox without them (sql/009)
        " FROM public.cdc_backfill b JOIN {} o"
        " ON o.id = b.event_id WHERE b.slot_name = %s ORDER BY b.seq LIMIT %s"
        " FOR UPDATE OF o"
    ).format(db.table_ident(settings.outbox_table))
    conn.execute(
        sql.SQL(
            "DELETE FROM public.cdc_backfill b WHERE b.slot_name = %s"
            " AND NOT EXISTS (SELECT 1 FROM {} o WHERE o.id = b.event_id)"
        ).format(db.table_ident(settings.outbox_table)),
        (settings.slot,),
    )
    total = 0
    while True:
        with conn.transaction():
            # Not SKIP LOCKED: a skipped row would come later with a key below the stream's
            # mark and be dropped as a duplicate. Wait for a producer's lock, briefly.
            conn.execute("SET LOCAL lock_timeout = '10s'")
            rows = conn.execute(select, (settings.slot, settings.batch_size)).fetchall()
            if not rows:
                break
            events = [
                OutboxEvent(
                    r[1], r[2], r[3], r[4], r[5], r[6], r[7], base, int(r[0]),
                    key=dedup_key(epoch, base, int(r[0])),
                    traceparent=r[8] or "", tracestate=r[9] or "",
                )
                for r in rows
            ]
            yield Batch(events, 0)  # published and marked when this resumes
            conn.execute(
                "DELETE FROM public.cdc_backfill WHERE slot_name = %s AND seq = ANY(%s)",
                (settings.slot, [e.position for e in events]),
            )
            total += len(events)
    left = conn.execute(
        "SELECT count(*) FROM public.cdc_backfill WHERE slot_name = %s", (settings.slot,)
    ).fetchone()
    if left and left[0]:
        # Streaming now would raise the marks above the rows still queued: retry instead.
        raise SourceError(f"backfill of slot {settings.slot}: {left[0]} rows still queued")
    conn.execute(
        "UPDATE public.cdc_slot SET backfilled_at = now() WHERE slot_name = %s", (settings.slot,)
    )
    if total:
        log.info("backfill of slot %s published %d pre-slot events", settings.slot, total)
