"""The seed's design, as a reference: a polling relay (batch 50, poll 1 s, UPDATE per event).

`SELECT ... WHERE status = 'PENDING' ORDER BY created_at LIMIT 50 FOR UPDATE SKIP LOCKED`,
an XADD per event, an UPDATE per event, sleep 1 s when nothing is pending.
"""

from __future__ import annotations

import threading

import orjson
import psycopg
import redis

BATCH_SIZE = 50
POLL_INTERVAL_S = 1.0


def route(event_type: str) -> str:
    """Route as the seed does."""
    if event_type.startswith("WATCH_"):
        return "axiom:watches"
    if event_type.startswith("WORKER_"):
        return "axiom:workers"
    return "axiom:core:events"


def run(dsn: str, redis_url: str, stop: threading.Event) -> int:
    """Poll and publish until `stop` is set; return how many events were published."""
    r = redis.Redis.from_url(redis_url)
    published = 0
    with psycopg.connect(dsn) as conn:
        while not stop.is_set():
            with conn.transaction():
                rows = conn.execute(
                    "SELECT id::text, tenant_id, aggregate_type, aggregate_id, event_type,"
                    " payload FROM event_outbox WHERE status = 'PENDING' ORDER BY created_at"
                    " LIMIT %s FOR UPDATE SKIP LOCKED",
                    (BATCH_SIZE,),
                ).fetchall()
                for event_id, tenant, agg_type, agg_id, event_type, payload in rows:
                    r.xadd(
                        route(event_type),
                        {
                            "event_id": event_id,
                            "event_type": event_type,
                            "aggregate_type": agg_type,
                            "aggregate_id": agg_id,
                            "payload": orjson.dumps(payload),
                            "tenant_id": tenant,
                            "idempotency_key": str(payload.get("idempotency_key", "")),
                        },
                    )
                    conn.execute(
                        "UPDATE event_outbox SET status = 'PUBLISHED', published_at = now()"
                        " WHERE id = %s",
                        (event_id,),
                    )
                    published += 1
            if not rows:
                stop.wait(POLL_INTERVAL_S)
    r.close()
    return published
