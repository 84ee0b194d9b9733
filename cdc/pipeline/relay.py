"""The relay loop: read → decode → route → publish → (write back) → confirm.

One session holds the slot until an error; `run()` decides (errors.policy) whether to
retry with backoff, stand by for a busy slot, or stop with a hint. A replayed session
is harmless: publishes are deduplicated in Redis by (slot epoch, commit LSN, position).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from datetime import datetime

import psycopg

from cdc.backoff import Backoff
from cdc.errors import Action, CdcError, ConfigError, EventError, EventTooLarge, SlotBusy, policy
from cdc.observe.metrics import Metrics
from cdc.pg import db, slots
from cdc.pg import lsn as lsnlib
from cdc.pipeline.backfill import backfill
from cdc.pipeline.checkpoint import Batch, Checkpoint
from cdc.pipeline.contracts import Registry
from cdc.pipeline.deadletter import SKIP, DeadLetters, kept_payload
from cdc.pipeline.decode import Commit, Decoder, OutboxEvent
from cdc.pipeline.route import Router
from cdc.pipeline.sink import DLQ_FIELDS, ENTRY_FIELDS, RedisSink
from cdc.pipeline.source import Keepalive, ReplicationStream
from cdc.pipeline.writeback import LINGER_S, WriteBack, bookkeeping, id_list, mark_published
from cdc.settings import Settings
from cdc.streams import keys, redisstate
from cdc.streams.redisstate import new_token

log = logging.getLogger(__name__)
STATUS_MIN_INTERVAL = 0.01
WRITEBACK_RECHECK_S = 2 * LINGER_S  # a write-back lingers up to LINGER_S, then runs
REPLY_TIMEOUT = 5.0  # a batch unanswered this long is read with a blocking, timed-out read


class Prepare:
    """Validate an event (size, route, contract) and flatten it into stream fields."""

    def __init__(self, settings: Settings) -> None:
        self.router = Router(settings.routes)
        self.registry = Registry(unknown=settings.unknown_events)
        self.max_bytes = settings.max_event_bytes

    def check(self, ev: OutboxEvent) -> str:
        """Return the event's stream, or raise EventError; note its idempotency key."""
        payload, event_type = ev.payload, ev.event_type
        # UTF-8 takes at most 4 bytes a character: encode only when it could matter.
        if len(payload) * 4 > self.max_bytes:
            size = len(payload.encode())
            if size > self.max_bytes:
                raise EventTooLarge(f"payload is {size} bytes, over {self.max_bytes}", size=size)
        stream = self.router.stream_for(event_type, ev.tenant_id, ev.aggregate_id)
        ev.idempotency_key = self.registry.validate_json(event_type, payload)
        return stream


def entry(ev: OutboxEvent) -> list[str]:
    """Return [dedup key, *values in ENTRY_FIELDS order]."""
    return [
        ev.key, ev.event_id, ev.event_type, ev.aggregate_type, ev.aggregate_id, ev.tenant_id,
        ev.payload, ev.idempotency_key, ev.created_at,
        ev.commit_lsn_text or lsnlib.format(ev.commit_lsn),
    ]


_PAYLOAD_AT = 1 + ENTRY_FIELDS.index("payload")  # in entry(): after the dedup key


def dead_entry(ev: OutboxEvent, error: EventError, stream: str) -> list[str]:
    """Return [dedup key, *values in DLQ_FIELDS order]: an oversized payload only as a prefix."""
    payload, size, cut = kept_payload(ev, error)
    values = entry(ev)
    values[_PAYLOAD_AT] = payload
    return [*values, str(error), stream, str(size), "1" if cut else "0"]


def commit_age(commit_time: str) -> float:
    """Return seconds since a wal2json commit timestamp ('2026-01-01 10:00:00.1+00')."""
    try:
        return time.time() - datetime.fromisoformat(commit_time).timestamp()
    except ValueError:
        return 0.0


class Publisher:
    """Turn sealed batches into Redis commands, acknowledge them in order, write back."""

    def __init__(
        self, settings: Settings, sink: RedisSink, conn: db.Conn, metrics: Metrics
    ) -> None:
        self.prepare = Prepare(settings)
        self.sink = sink
        self.conn = conn
        self.metrics = metrics
        self.mark_published = settings.mark_published
        self.dead = DeadLetters(conn, table=settings.outbox_table, max_retry=settings.max_retry)
        self._update = mark_published(settings.outbox_table)

    def send(self, batch: Batch) -> None:
        """Route, validate and send every event of `batch` (failures go to the DLQ)."""
        by_stream: dict[str, list[list[str]]] = {}
        names: dict[str, tuple[str, ...]] = {}
        check = self.prepare.check
        published = batch.published_ids.append
        for ev in batch.events:
            try:
                stream = check(ev)
            except EventError as e:
                self.metrics.failed.inc()
                maybe = self.dead.fail(ev, e, check)
                if maybe is None:
                    self.metrics.dead_lettered.inc()
                    dead = dead_entry(ev, self.dead.last_error or e, self._stream_or(ev))
                    by_stream.setdefault(keys.DLQ, []).append(dead)
                    names[keys.DLQ] = DLQ_FIELDS
                    continue
                if maybe == SKIP:
                    continue
                stream = maybe
            entries = by_stream.get(stream)
            if entries is None:
                entries = by_stream[stream] = []
            entries.append(entry(ev) if not ev.traceparent else
                           [*entry(ev), ev.traceparent, ev.tracestate])
            published(ev.event_id)
        batch.replies = self.sink.send(by_stream, names) if by_stream else ()

    def _stream_or(self, ev: OutboxEvent) -> str:
        try:
            return self.prepare.router.stream_for(ev.event_type, ev.tenant_id, ev.aggregate_id)
        except EventError:
            return ""

    def ack(self, batch: Batch, writeback: WriteBack | None = None) -> None:
        """Wait for `batch`'s replies, then mark its rows PUBLISHED when configured.

        With `writeback` the UPDATE runs on its thread; without, here and now.
        """
        added = self.sink.read_replies(batch.replies)
        published = len(batch.published_ids)
        self.metrics.published.inc(published)
        self.metrics.duplicates.inc(max(0, len(batch.events) - added))
        if writeback is not None:
            writeback.submit(batch.published_ids, batch.confirm_lsn)
        elif self.mark_published and batch.published_ids:
            with self.conn.transaction():
                self.conn.execute(self._update, (id_list(batch.published_ids),))
        if batch.events:
            age = max(0.0, commit_age(batch.events[-1].commit_time))
            self.metrics.ack_latency.observe(age)
            self.metrics.lag_seconds.set(age)


class Session:
    """One hold of the slot: stream until stopped, drained (`once`), or an error."""

    def __init__(
        self, settings: Settings, metrics: Metrics, stop: threading.Event,
        redis_nodes: list[tuple[str, int]] | None = None,
    ) -> None:
        self.s = settings
        self.redis_nodes = redis_nodes if redis_nodes is not None else []
        self.metrics = metrics
        self.stop = stop
        self.batch: list[OutboxEvent] = []
        self.decoder = Decoder()
        self.sent_lsn = -1
        self.sent_at = 0.0
        self.target: int | None = None
        self.wb: WriteBack | None = None
        self.linger_until = 0.0

    def run(self, *, once: bool) -> None:
        """Stream from the slot's confirmed position; return when stopped or drained."""
        dsn = self.s.database_url.get_secret_value()
        sink = RedisSink(
            self.s.redis_url.get_secret_value(), maxlen=self.s.stream_maxlen,
            min_replicas=self.s.redis_min_replicas, wait_timeout_ms=self.s.redis_wait_timeout_ms,
            known_nodes=self.redis_nodes,
        )
        conn = db.connect(dsn, autocommit=True)
        stream: ReplicationStream | None = None
        try:
            # One relay per slot, from backfill on: the lock lives as long as `conn`.
            slots.lock(conn, self.s.slot)
            bookkeeping(conn)
            _check_table(conn, self.s.outbox_table)
            sink.connect()
            self.redis_nodes[:] = sink.known_nodes  # for the next session, if this node dies
            reset = redisstate.observe(conn, self.s.slot, sink.instance_token(new_token()))
            self.metrics.redis_reset.set(1 if reset else 0)
            pub = Publisher(self.s, sink, conn, self.metrics)
            router = pub.prepare.router
            sink.check_partitions(router.partitions)
            routed = router.streams()
            if moved := sink.migrate_marks([*routed, keys.DLQ]):
                log.info("moved %d high-water mark(s) to format %s", moved, keys.FORMAT_VERSION)
            sink.ensure_groups(routed, self.s.group_names())
            sink.prime([*routed, keys.DLQ])
            self.decoder.epoch = slots.epoch(conn, self.s.slot)
            if self.s.backfill and self.s.mark_published:
                backfill(self.s, conn, pub, epoch=self.decoder.epoch)
            start = slots.confirmed_lsn(conn, self.s.slot)
            self.target = slots.current_lsn(conn) if once else None
            if self.s.mark_published:
                self.wb = WriteBack(dsn, table=self.s.outbox_table, start_lsn=start)
            stream = ReplicationStream(dsn, slot=self.s.slot, table=self.s.outbox_table)
            self.metrics.up.set(1)
            log.info("streaming slot %s from %s", self.s.slot, lsnlib.format(start))
            self._loop(stream, pub, Checkpoint(start))
        except psycopg.Error as e:
            raise db.translate(e) from None
        finally:
            self.metrics.up.set(0)
            if stream is not None:
                stream.close()
            if self.wb is not None:
                self.wb.close()
            sink.close()
            conn.close()

    def _loop(self, stream: ReplicationStream, pub: Publisher, cp: Checkpoint) -> None:
        batch_size, max_in_flight = self.s.batch_size, self.s.max_in_flight
        decoder, read, feed = self.decoder, stream.read, self.decoder.feed
        batch = self.batch
        seen = 0
        # What exists now (modules, settings, connections) outlives the loop: frozen, it is
        # not re-scanned by every full collection the events' garbage triggers (about
        # 0.3 us an event). Collected first so no garbage is frozen; unfrozen on the way out.
        gc.collect()
        gc.freeze()
        try:
            while True:
                # Mid-transaction the rest is on its way and _idle would not seal: refill
                # from the socket at once, not after polling Redis and select() (syscalls
                # at every refill). Replies then wait for max_in_flight or a lull.
                msg = read(decoder.in_transaction)
                if msg is None:
                    if self._idle(stream, pub, cp):
                        return
                    batch = self.batch
                    continue
                if type(msg) is Keepalive:
                    if not decoder.in_transaction and not batch:
                        cp.idle(msg.wal_end)
                    if msg.reply_requested:
                        self._status(stream, cp)
                    continue
                item = feed(msg)  # type: ignore[arg-type]
                if type(item) is OutboxEvent:
                    batch.append(item)
                    if len(batch) >= batch_size:
                        self._seal(pub, cp)
                        batch = self.batch
                        if len(cp.in_flight) >= max_in_flight:
                            self._ack_oldest(pub, cp)
                            if time.monotonic() - self.sent_at > STATUS_MIN_INTERVAL:
                                self._status(stream, cp)
                elif isinstance(item, Commit):
                    cp.committed(item.end_lsn)
                seen += 1
                if not seen & 1023 and self.stop.is_set():
                    self._drain(stream, pub, cp)
                    return
        finally:
            gc.unfreeze()

    def _idle(self, stream: ReplicationStream, pub: Publisher, cp: Checkpoint) -> bool:
        """Nothing buffered: flush, ack, confirm, then wait; return True when done.

        Inside a transaction the rest of it is on its way: keep filling the batch
        (it is sealed when full) instead of sending a small one.
        """
        if self.batch and (not self.decoder.in_transaction or self.stop.is_set()):
            if self._linger(stream):
                return False
            self._seal(pub, cp)
        if cp.in_flight:
            reply = pub.sink.wait(
                stream.fileno, self.s.status_interval_s, cp.in_flight[0].replies
            )
            overdue = time.monotonic() - cp.in_flight[0].sent_at > REPLY_TIMEOUT
            if reply or overdue or self.stop.is_set():
                self._ack_oldest(pub, cp)  # blocks at most the socket timeout
            else:
                stream.consume()
            return False
        if not self.decoder.in_transaction:
            cp.idle()
        safe = self._safe(cp)
        drained = self.target is not None and safe >= self.target
        now = time.monotonic()
        if safe != self.sent_lsn or now - self.sent_at > self.s.status_interval_s:
            # In --once mode ask for a keepalive: it carries the server's WAL end.
            self._status(stream, cp, reply=self.target is not None and not drained)
            self.metrics.lag_seconds.set(0)
        if drained or self.stop.is_set():
            return True
        if safe < cp.confirmed:  # write-back still running: look again once it may be done
            stream.wait(WRITEBACK_RECHECK_S)
        else:
            stream.wait(self.s.status_interval_s if self.target is None else 0.05)
        return False

    def _linger(self, stream: ReplicationStream) -> bool:
        """Hold a small batch up to CDC_LINGER_MS for more events; True while holding."""
        if not self.s.linger_ms or self.stop.is_set() or len(self.batch) >= self.s.batch_size:
            return False
        now = time.monotonic()
        if not self.linger_until:
            self.linger_until = now + self.s.linger_ms / 1000
        if now < self.linger_until:
            stream.wait(self.linger_until - now)
            return True
        self.linger_until = 0.0
        return False

    def _safe(self, cp: Checkpoint) -> int:
        """Return the LSN to confirm: acknowledged by Redis and, if on, written back."""
        return cp.confirmed if self.wb is None else self.wb.safe(cp.confirmed)

    def _status(self, stream: ReplicationStream, cp: Checkpoint, *, reply: bool = False) -> None:
        safe = self._safe(cp)
        stream.send_status(safe, reply=reply)
        self.sent_lsn, self.sent_at = safe, time.monotonic()
        self.metrics.confirmed_lsn.set(safe)

    def _ack_oldest(self, pub: Publisher, cp: Checkpoint) -> None:
        """Read the oldest batch's replies; count it acknowledged only if none was an error."""
        pub.ack(cp.in_flight[0], self.wb)
        cp.acked()

    def _seal(self, pub: Publisher, cp: Checkpoint) -> None:
        batch = Batch(self.batch, 0, sent_at=time.monotonic())
        self.batch = []
        self.linger_until = 0.0
        pub.send(batch)
        cp.seal(batch)

    def _drain(self, stream: ReplicationStream, pub: Publisher, cp: Checkpoint) -> None:
        if self.batch:
            self._seal(pub, cp)
        while cp.in_flight:
            self._ack_oldest(pub, cp)
        if self.wb is not None:
            self.wb.flush(timeout=3.0)
        self._status(stream, cp)


def _check_table(conn: db.Conn, table: str) -> None:
    """Stop with a hint when CDC_OUTBOX_TABLE names no table (the slot would stream nothing)."""
    row = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    if not row or row[0] is None:
        raise ConfigError(
            f"CDC_OUTBOX_TABLE: table {table} does not exist",
            hint="set CDC_OUTBOX_TABLE to the outbox table (schema.name), or run `cdc migrate`",
        )


class Relay:
    """Run sessions until stopped: retry transient errors, stand by while the slot is busy."""

    def __init__(self, settings: Settings, *, metrics: Metrics, stop: threading.Event) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stop = stop

    def run(self, *, once: bool = False) -> None:
        """Ensure the slot, then stream; return on stop or when `once` has drained."""
        backoff = Backoff(base=0.1, cap=self.settings.standby_max_backoff_s)
        redis_nodes: list[tuple[str, int]] = []  # a Redis Cluster's nodes, kept across sessions
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                # Every attempt: a slot dropped under a running relay is created again.
                slots.ensure(self.settings)
                Session(self.settings, self.metrics, self.stop, redis_nodes).run(once=once)
                return
            except SlotBusy as e:
                log.info("standing by: %s; retrying", e)
            except CdcError as e:
                if policy(e) is Action.STOP:
                    raise
                log.warning("%s; retrying with backoff", e.one_line())
            if time.monotonic() - started > 30:  # it had been streaming: start over gently
                backoff.reset()
            if backoff.wait(self.stop):
                return
