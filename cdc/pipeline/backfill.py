"""One-shot catch-up: publish the PENDING rows that predate the slot, then let the stream rule.

The rows were queued in `cdc_backfill` under the slot's exported snapshot, so none of
them is also in the stream. They are drained in created_at order by
`SELECT ... FOR UPDATE` batches, deduplicated in Redis under the keys
(slot epoch, consistent point - 1, seq), which sort below every streamed event of that slot.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from psycopg import sql

from cdc.errors import SourceError
from cdc.pg import db
from cdc.pg import lsn as lsnlib
from cdc.pipeline.checkpoint import Batch
from cdc.pipeline.decode import OutboxEvent, dedup_key
from cdc.settings import Settings

if TYPE_CHECKING:
    from cdc.pipeline.relay import Publisher

log = logging.getLogger(__name__)


def backfill(settings: Settings, conn: db.Conn, pub: Publisher, *, epoch: int) -> int:
    """Publish the slot's queued pre-slot rows; return how many were published now."""
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
        return 0
    if row[1]:
        return 0
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
            batch = Batch(events, 0)
            pub.send(batch)
            pub.ack(batch)
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
    return total
