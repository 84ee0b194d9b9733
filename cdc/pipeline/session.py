"""One hold of the slot: build the real stages, catch up (backfill), run the loop, close.

`assemble` is the one place the relay's collaborators are made: the slot's lock
connection, the Redis sink, the publisher, the Marker and the replication stream. It
prepares Redis (partitions recorded, mark format, consumer groups) and PostgreSQL (the slot
lock, the table checked, the backfill) before the first streamed message. Everything it
opens is closed by the ExitStack it is given, in reverse order.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ExitStack

import psycopg

from cdc.errors import ConfigError
from cdc.observe.metrics import Metrics
from cdc.pg import db, slots
from cdc.pg import lsn as lsnlib
from cdc.pipeline import backfill
from cdc.pipeline.checkpoint import Checkpoint
from cdc.pipeline.contracts import Registry
from cdc.pipeline.deadletter import DeadLetters
from cdc.pipeline.decode import Decoder
from cdc.pipeline.loop import Knobs, RelayLoop, Stages
from cdc.pipeline.marks import MarkNow, Unmarked, bookkeeping
from cdc.pipeline.publisher import Prepare, Publisher
from cdc.pipeline.sink import RedisSink
from cdc.pipeline.source import ReplicationStream
from cdc.pipeline.stages import Marker
from cdc.pipeline.writeback import WriteBack
from cdc.settings import Settings
from cdc.streams import keys, redisstate
from cdc.streams.redisstate import new_token

log = logging.getLogger(__name__)


def knobs(settings: Settings) -> Knobs:
    """Return the loop's settings."""
    return Knobs(
        batch_size=settings.batch_size, max_in_flight=settings.max_in_flight,
        linger_ms=settings.linger_ms, status_interval_s=settings.status_interval_s,
    )


def publisher(settings: Settings, sink: RedisSink, conn: db.Conn, metrics: Metrics) -> Publisher:
    """Return the publisher of a session: its checks from settings, its failures on `conn`."""
    prepare = Prepare(settings.router, Registry(unknown=settings.unknown_events),
                      max_bytes=settings.max_event_bytes)
    dead = DeadLetters(conn, table=settings.outbox_table, max_retry=settings.max_retry)
    return Publisher(prepare, sink, dead, metrics)


def assemble(
    stack: ExitStack, settings: Settings, metrics: Metrics, stop: threading.Event, *,
    redis_nodes: list[tuple[str, int]], once: bool,
) -> RelayLoop:
    """Open and prepare every stage; return the loop, ready to run from the slot's position."""
    s = settings
    sink = RedisSink(
        s.redis_url, maxlen=s.stream_maxlen, min_replicas=s.redis_min_replicas,
        wait_timeout_ms=s.redis_wait_timeout_ms, known_nodes=redis_nodes,
    )
    stack.callback(sink.close)
    conn = db.connect(s.database_url, autocommit=True)
    stack.callback(conn.close)
    # One relay per slot, from backfill on: the lock lives as long as `conn`.
    slots.lock(conn, s.slot)
    bookkeeping(conn)
    check_table(conn, s.outbox_table)
    sink.connect()
    redis_nodes[:] = sink.known_nodes  # for the next session, if this node dies
    reset = redisstate.observe(conn, s.slot, sink.instance_token(new_token()))
    metrics.redis_reset.set(1 if reset else 0)
    prepare_redis(sink, s)
    pub = publisher(s, sink, conn, metrics)
    decoder = Decoder(epoch=slots.epoch(conn, s.slot))
    if s.backfill and s.mark_published:
        catch_up(s, conn, pub, epoch=decoder.epoch)
    start = slots.confirmed_lsn(conn, s.slot)
    target = slots.current_lsn(conn) if once else None
    marker: Marker = Unmarked()
    if s.mark_published:
        wb = WriteBack.open(s.database_url, table=s.outbox_table, start_lsn=start)
        stack.callback(wb.close)
        marker = wb
    source = ReplicationStream(s.database_url, slot=s.slot, table=s.outbox_table)
    stack.callback(source.close)
    log.info("streaming slot %s from %s", s.slot, lsnlib.format(start))
    stages = Stages(source, pub, marker, Checkpoint(start), decoder)
    return RelayLoop(stages, knobs=knobs(s), metrics=metrics, stop=stop, target=target)


def prepare_redis(sink: RedisSink, settings: Settings) -> None:
    """Record the partitions, carry old marks over, create the groups, prime the marks."""
    router = settings.router
    sink.check_partitions(router.partitions)
    routed = router.streams()
    if moved := sink.migrate_marks([*routed, keys.DLQ]):
        log.info("moved %d high-water mark(s) to format %s", moved, keys.FORMAT_VERSION)
    sink.ensure_groups(routed, settings.groups)
    sink.prime([*routed, keys.DLQ])


def catch_up(settings: Settings, conn: db.Conn, pub: Publisher, *, epoch: int) -> None:
    """Publish the pre-slot rows (backfill.batches) as the loop publishes: ack, then mark."""
    marker = MarkNow(conn, table=settings.outbox_table)
    for batch in backfill.batches(settings, conn, epoch=epoch):
        pub.send(batch)
        pub.ack(batch)
        marker.submit(batch.published_ids, batch.confirm_lsn)


def check_table(conn: db.Conn, table: str) -> None:
    """Stop with a hint when CDC_OUTBOX_TABLE names no table (the slot would stream nothing)."""
    row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    if not row or row[0] is None:
        raise ConfigError(
            f"CDC_OUTBOX_TABLE: table {table} does not exist",
            hint="set CDC_OUTBOX_TABLE to the outbox table (schema.name), or run `cdc migrate`",
        )


def run_session(
    settings: Settings, metrics: Metrics, stop: threading.Event, *,
    redis_nodes: list[tuple[str, int]], once: bool,
) -> None:
    """Hold the slot and stream until stopped, drained (`once`), or an error."""
    try:
        with ExitStack() as stack:
            stack.callback(metrics.up.set, 0)
            loop = assemble(stack, settings, metrics, stop, redis_nodes=redis_nodes, once=once)
            metrics.up.set(1)
            loop.run()
    except psycopg.Error as e:
        raise db.translate(e) from None
