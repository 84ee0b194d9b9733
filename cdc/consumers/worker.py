"""A consumer-group worker: read, handle, acknowledge; reclaim what dead consumers left behind.

    XREADGROUP ... BLOCK     new entries for this consumer
    handler(entry)           your code; an exception leaves the entry pending
    XACK (+ ZADD seen)       one MULTI per batch, after the handlers succeeded
    XAUTOCLAIM               entries pending longer than `claim_idle_ms` (a dead or slow
                             consumer, or a failed handler) are taken over and handled again
    XADD dlq + XACK          an entry delivered more than `max_deliveries` times is moved to
                             axiom:dlq:events with the reason, in one MULTI

Delivery is at least once: a crash after the handler and before the XACK hands the entry
to another consumer.

Ordered (`ordered=True`, for partitioned routes): each partition stream of the group has
at most one owner at a time, by a fenced lease (cdc/leases.py); a new owner first finishes
the pending entries the previous one left (XAUTOCLAIM, oldest first), then reads on, and a
failed entry holds its partition back, so each aggregate's events are handled in commit
order. Reads, claims and acks are refused once the lease is lost; the handler gets the
lease's token as `Entry.fence` for writes that must be fenced too.

`dedup=True` skips entries whose `event_id` this group already handled
(a sorted set per group, pruned after `dedup_ttl_s`), which also absorbs republished events.

`Consumer` (redis-py, a thread) and `AsyncConsumer` (redis.asyncio, a task) share all of
this: the logic is written once as generators that yield what to do next — a Redis
command (`Call`), a MULTI (`Multi`), the handler (`Handle`) or a wait (`Sleep`) — and
each class only drives them with its own client, as psycopg's generators do.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import orjson
import redis
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from cdc.backoff import Backoff
from cdc.consumers.leases import Leases, Part
from cdc.consumers.steps import REDIS_ERRORS, Call, Handle, Multi, Sleep, Steps
from cdc.errors import SinkError
from cdc.observe import tracing
from cdc.pipeline.route import partition_stream
from cdc.streams import keys, redisconn

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as a handler sees it."""

    stream: str
    id: str
    fields: dict[str, str]
    deliveries: int = 1
    fence: str = ""  # ordered: the partition lease's token ("<consumer> <epoch>") it came with

    @property
    def event_id(self) -> str:
        """Return the outbox event id ('' when the entry has none)."""
        return self.fields.get("event_id", "")

    @property
    def event_type(self) -> str:
        """Return the event type ('' when the entry has none)."""
        return self.fields.get("event_type", "")

    def payload(self) -> Any:
        """Return the payload parsed from its JSON text (None when absent)."""
        text = self.fields.get("payload")
        return None if text is None else orjson.loads(text)


Handler = Callable[[Entry], None]
AsyncHandler = Callable[[Entry], Awaitable[None]]
T = TypeVar("T")


@dataclass(slots=True)
class ConsumerStats:
    """Plain counters; `consumer_registry` exports them."""

    delivered: int = 0  # entries received (read or claimed)
    handled: int = 0  # handler returned
    acked: int = 0  # XACKed (handled, duplicates and dead letters)
    failed: int = 0  # handler raised
    claimed: int = 0  # taken over with XAUTOCLAIM
    dead_lettered: int = 0  # moved to the DLQ after too many deliveries
    duplicates: int = 0  # skipped: event_id already handled by the group
    redis_errors: int = 0  # Redis unreachable; retried with backoff
    leases_acquired: int = 0  # ordered: partitions taken (free, or after a lease lapsed)
    leases_lost: int = 0  # ordered: partitions lost (lease lapsed or taken over)
    fenced: int = 0  # ordered: a read, claim or ack refused because the lease was gone


def default_name() -> str:
    """Return a consumer name unique to this process: host-pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


class _Group:
    """What both consumers share: configuration, state, counters and the logic as Steps."""

    def __init__(
        self,
        *,
        group: str,
        streams: Sequence[str],
        consumer: str | None,
        count: int,
        block_ms: int,
        claim_idle_ms: int,
        max_deliveries: int,
        dedup: bool,
        dedup_ttl_s: float,
        start_id: str,
        ordered: bool,
        lease_ms: int,
    ) -> None:
        if not streams:
            raise ValueError("at least one stream is needed")
        self.group = group
        self.streams = list(streams)
        self.name = consumer or default_name()
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.dedup = dedup
        self.dedup_ttl_s = dedup_ttl_s
        self.start_id = start_id
        self.stats = ConsumerStats()
        self._seen_key = keys.consumer_seen(group)
        self._errors: dict[str, str] = {}  # entry id -> last handler error (this process)
        self._next_claim = 0.0
        self._cursor = dict.fromkeys(self.streams, "0-0")
        # ordered: `streams` name routes; their partitions are owned through leases
        self.routes = list(streams) if ordered else []
        self.leases = Leases(group=group, me=self.name, lease_ms=lease_ms) if ordered else None

    def _stopped(self) -> bool:
        raise NotImplementedError

    def _ensure_groups(self) -> Steps[None]:
        if self.leases is not None and not self.leases.streams:
            yield from self._resolve_partitions()
        for stream in self.streams:
            try:
                yield Call("xgroup_create", (stream, self.group),
                           {"id": self.start_id, "mkstream": True})
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise redisconn.translate(e, "XGROUP CREATE") from None
            except REDIS_ERRORS as e:
                raise redisconn.translate(e, "XGROUP CREATE") from None

    def _resolve_partitions(self) -> Steps[None]:
        """Expand each route into its partition streams, as many as the relay recorded."""
        streams: list[str] = []
        for route in self.routes:
            key = keys.partitions(route)
            try:
                n: Any = yield Call("get", (key,))
            except REDIS_ERRORS as e:
                raise redisconn.translate(e, "GET") from None
            if n is None:
                raise SinkError(
                    f"{key} is not set: no relay has published {route} yet",
                    hint="start `cdc run` with CDC_ROUTES naming it, e.g. *=axiom:core:events/8")
            count = int(n)
            streams += [route] if count == 1 else [partition_stream(route, p)
                                                    for p in range(count)]
        assert self.leases is not None
        self.streams = self.leases.streams = streams

    def _run(self, limit: int | None, timeout: float | None) -> Steps[ConsumerStats]:
        deadline = None if timeout is None else time.monotonic() + timeout
        backoff = Backoff(base=0.1, cap=2.0)
        ready = False
        while not self._stopped():
            if limit is not None and self.stats.acked >= limit:
                break
            block = self.block_ms
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                block = max(1, min(block, int(left * 1000)))
            try:
                if not ready:
                    yield from self._ensure_groups()
                    ready = True
                yield from self._step(block)
                backoff.reset()
            except SinkError as e:
                self.stats.redis_errors += 1
                log.warning("%s; retrying", e.one_line())
                if (yield Sleep(backoff.next_delay())):
                    break
        yield from self._leave()
        return self.stats

    def _leave(self) -> Steps[None]:
        """Give up every partition lease (ordered), so the others take over at once."""
        if self.leases is None or not self.leases.members:
            return
        try:
            yield from self.leases.leave()
        except REDIS_ERRORS as e:
            log.warning("%s could not release its leases (they expire): %s", self.name, e)

    def _step(self, block_ms: int | None) -> Steps[int]:
        block = self.block_ms if block_ms is None else block_ms
        try:
            if self.leases is not None:
                return (yield from self._ordered_step(self.leases, block))
            n = 0
            if time.monotonic() >= self._next_claim:
                n = yield from self._claim()
            if n == 0:
                n = yield from self._read(block)
            return n
        except redis.ResponseError as e:
            if "NOGROUP" in str(e):  # stream deleted or Redis lost its data: start again
                log.warning("group %s vanished (%s); re-creating it", self.group, e)
                yield from self._ensure_groups()
                return 0
            raise redisconn.translate(e, "XREADGROUP") from None
        except REDIS_ERRORS as e:
            raise redisconn.translate(e, "XREADGROUP") from None

    def _read(self, block_ms: int) -> Steps[int]:
        reply: Any = yield Call(
            "xreadgroup", (self.group, self.name, dict.fromkeys(self.streams, ">")),
            {"count": self.count, "block": block_ms},
        )
        n = 0
        for stream, entries in reply or []:
            batch = [Entry(stream, eid, f or {}) for eid, f in entries]
            yield from self._handle(batch)
            n += len(batch)
        return n

    def _claim(self) -> Steps[int]:
        """Take over entries idle for `claim_idle_ms`; handle or dead-letter them."""
        n = 0
        done = True
        for stream in self.streams:
            claimed: Any = yield Call(
                "xautoclaim", (stream, self.group, self.name, self.claim_idle_ms),
                {"start_id": self._cursor[stream], "count": self.count},
            )
            nxt, entries, *rest = claimed
            self._cursor[stream] = nxt
            if nxt != "0-0":
                done = False
            if rest and rest[0]:
                log.info("%d pending entries of %s were trimmed away", len(rest[0]), stream)
            live = [(eid, f) for eid, f in entries if f is not None]
            if not live:
                continue
            self.stats.claimed += len(live)
            rows: Any = yield Call("xpending_range", (
                stream, self.group, live[0][0], live[-1][0], len(live) * 2, self.name))
            counts = {str(r["message_id"]): int(r["times_delivered"]) for r in rows}
            yield from self._handle([Entry(stream, eid, f, counts.get(eid, 2)) for eid, f in live])
            n += len(live)
        if done:
            self._next_claim = time.monotonic() + max(self.claim_idle_ms / 2000, 0.05)
            yield from self._prune_seen()
        return n

    def _prune_seen(self) -> Steps[None]:
        if self.dedup:
            yield Call("zremrangebyscore", (self._seen_key, "-inf", time.time() - self.dedup_ttl_s))

    # -- ordered: one owner per partition, through leases (cdc/leases.py) -------------------

    def _ordered_step(self, leases: Leases, block_ms: int) -> Steps[int]:
        """Rebalance when due; per owned partition finish what is pending, else read on."""
        if not leases.streams:  # step() before run() or ensure_groups()
            yield from self._ensure_groups()
        n = 0
        for part in [None, *leases.owned.values()]:
            if leases.due():
                yield from self._rebalance(leases)
            if part is None or leases.owned.get(part.stream) is not part:
                continue  # lost (and maybe taken again, a new tenure) since the list was made
            if time.monotonic() < part.not_before:
                continue
            try:
                n += yield from (self._read_part(part) if part.drained else self._drain(part))
            except REDIS_ERRORS as e:
                if "FENCED" not in str(e):
                    part.drained, part.cursor = False, "0-0"  # an ack may not have landed
                    raise
                self.stats.fenced += 1
                leases.drop(part, "a fenced call was refused")
        self.stats.leases_lost = leases.lost
        if n == 0 and not self._stopped():
            yield from self._wait(leases, block_ms)
        return n

    def _rebalance(self, leases: Leases) -> Steps[None]:
        yield from leases.rebalance()
        self.stats.leases_acquired, self.stats.leases_lost = leases.acquired, leases.lost
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + max(self.claim_idle_ms / 2000, 0.05)
            yield from self._prune_seen()

    def _drain(self, part: Part) -> Steps[int]:
        """Claim and handle the partition's pending entries (earlier owners'), oldest first."""
        assert self.leases is not None
        # Retrying a failed entry claims it alone: the entries behind it, not handled yet,
        # are not delivered again (their delivery counts stay for their own failures).
        count = 1 if part.retrying else self.count
        reply: Any = yield from self.leases.fenced(part, "claim", part.cursor, count)
        nxt, raw, counts, deleted = reply
        if deleted:
            log.info("%d pending entries of %s were trimmed away", deleted, part.stream)
        times = dict(zip(counts[::2], counts[1::2], strict=True))
        batch = [Entry(part.stream, eid, _pairs(f), int(times.get(eid, 2)), part.token)
                 for eid, f in raw]
        self.stats.claimed += len(batch)
        if batch and not (yield from self._handle(batch, part)):
            part.cursor = "0-0"  # cut short: start again at the oldest pending entry
            return len(batch)
        part.cursor, part.retrying = str(nxt), False
        part.drained = part.cursor == "0-0"
        return len(batch)

    def _read_part(self, part: Part) -> Steps[int]:
        assert self.leases is not None
        reply: Any = yield from self.leases.fenced(part, "read", self.count)
        raw, newest = reply
        batch = [Entry(part.stream, eid, _pairs(f), 1, part.token) for eid, f in raw]
        part.idle = not batch
        part.last_id = batch[-1].id if batch else str(newest or part.last_id)
        if batch and not (yield from self._handle(batch, part)):
            part.drained = False  # what was not handled is pending: finish it first
        return len(batch)

    def _wait(self, leases: Leases, block_ms: int) -> Steps[None]:
        """Block until an owned partition has new entries, the next heartbeat, or block_ms."""
        now = time.monotonic()
        parts = list(leases.owned.values())
        ready = [p for p in parts if p.not_before <= now]
        if not all(p.idle and p.drained for p in ready):
            return  # more to do at once
        ms = min(block_ms, leases.seconds_to_beat() * 1000,
                 *[(p.not_before - now) * 1000 for p in parts if p.not_before > now])
        if ready:
            yield Call("xread", ({p.stream: p.last_id for p in ready},),
                       {"count": 1, "block": max(1, int(ms))})
        else:
            yield Sleep(max(ms, 1) / 1000)

    # -- handling and acknowledging, both modes -------------------------------------------

    def _handle(self, batch: list[Entry], part: Part | None = None) -> Steps[bool]:
        """Handle a batch in order, then acknowledge what succeeded; True if all was handled.

        Ordered (`part`): the first failure ends the batch, and the partition waits
        `claim_idle_ms` before the failed entry is tried again; nothing after it runs first.
        """
        self.stats.delivered += len(batch)
        seen = yield from self._already_seen(batch)
        acks: list[str] = []
        handled_ids: list[str] = []
        pending: list[Entry] = []
        for entry in batch:
            if entry.deliveries > self.max_deliveries:
                yield from self._dead_letter(entry, part)
                self.stats.dead_lettered += 1
                self.stats.acked += 1
            else:
                pending.append(entry)
        complete = True
        while pending:  # a round per copy of an event id the batch holds twice (dedup)
            todo: list[Entry] = []
            later: list[Entry] = []
            ids: set[str] = set()
            for entry in pending:
                eid = entry.event_id
                if self.dedup and eid and eid in seen:
                    self.stats.duplicates += 1
                    acks.append(entry.id)
                elif self.dedup and eid and eid in ids:
                    later.append(entry)
                else:
                    todo.append(entry)
                    ids.add(eid)
            deadline = None if part is None else part.valid_until
            errors: list[Exception | None] = (
                (yield Handle(todo, deadline, part is not None)) if todo else [])
            failed = self._results(todo, errors, acks, handled_ids, seen)
            # Stopped: what the driver did not reach stays pending; XAUTOCLAIM hands it on.
            if failed or len(errors) < len(todo):
                complete = False
                if failed and part is not None:
                    part.not_before = time.monotonic() + self.claim_idle_ms / 1000
                    part.retrying = True
            pending = later if complete else []
        if acks:
            yield from self._ack(batch[0].stream, acks, handled_ids, part)
        return complete

    def _results(self, todo: list[Entry], errors: list[Exception | None], acks: list[str],
                 handled_ids: list[str], seen: set[str]) -> bool:
        """Count the handler's results; return True if one failed."""
        failed = False
        for entry, error in zip(todo, errors, strict=False):
            if error is not None:
                failed = True
                self.stats.failed += 1
                self._errors[entry.id] = f"{type(error).__name__}: {error}"[:500]
                log.warning("handler failed on %s %s (delivery %d): %s",
                            entry.stream, entry.id, entry.deliveries, error)
                continue
            self.stats.handled += 1
            self._errors.pop(entry.id, None)
            acks.append(entry.id)
            if entry.event_id:
                seen.add(entry.event_id)
                handled_ids.append(entry.event_id)
        return failed

    def _ack(self, stream: str, ids: list[str], handled_ids: list[str],
             part: Part | None) -> Steps[None]:
        """XACK `ids` (fenced when ordered) and record the handled event ids (dedup)."""
        seen = (Call("zadd", (self._seen_key, dict.fromkeys(handled_ids, time.time())))
                if self.dedup and handled_ids else None)
        if part is None or self.leases is None:
            yield Multi((*([seen] if seen else []), Call("xack", (stream, self.group, *ids))))
        else:
            yield from self.leases.fenced(part, "ack", *ids)
            if seen:
                yield seen
        self.stats.acked += len(ids)

    def _already_seen(self, batch: list[Entry]) -> Steps[set[str]]:
        ids = [e.event_id for e in batch if e.event_id] if self.dedup else []
        if not ids:
            return set()
        scores: Any = yield Call("zmscore", (self._seen_key, ids))
        return {eid for eid, score in zip(ids, scores, strict=True) if score is not None}

    def _dead_letter(self, entry: Entry, part: Part | None) -> Steps[None]:
        last = self._errors.pop(entry.id, "")
        reason = (
            f"delivered {entry.deliveries} times to group {self.group}, over the limit of"
            f" {self.max_deliveries}" + (f"; last error: {last}" if last else "")
        )
        body = {
            **entry.fields, "error": reason, "original_stream": entry.stream,
            "consumer_group": self.group, "entry_id": entry.id,
            "deliveries": str(entry.deliveries),
        }
        log.warning("entry %s of %s dead-lettered: %s", entry.id, entry.stream, reason)
        xadd = Call("xadd", (keys.DLQ, body))
        if part is None or self.leases is None:
            yield Multi((xadd, Call("xack", (entry.stream, self.group, entry.id))))
        else:  # the DLQ may be on another node: add, then ack fenced (a retry adds it twice)
            yield xadd
            yield from self.leases.fenced(part, "ack", entry.id)

    def _halt(self, todo: Handle) -> bool:
        """Return True when the driver must run no more entries of `todo`."""
        return self._stopped() or (todo.deadline is not None
                                   and time.monotonic() >= todo.deadline)


def _pairs(flat: list[str] | None) -> dict[str, str]:
    """Return a script's flat [field, value, ...] list of an entry as a dict."""
    items = flat or []
    return dict(zip(items[::2], items[1::2], strict=True))


class Consumer(_Group):
    """Read `streams` as `consumer` of `group` and hand each entry to `handler`.

    `ordered=True`: `streams` name routes (e.g. axiom:core:events, published in N
    partitions); this consumer owns a fair share of the group's partitions through leases
    of `lease_ms`, and hands each aggregate's events over in commit order.
    """

    def __init__(
        self,
        *,
        redis_url: str,
        group: str,
        streams: Sequence[str],
        handler: Handler,
        consumer: str | None = None,
        count: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        dedup: bool = False,
        dedup_ttl_s: float = 86_400.0,
        start_id: str = "$",
        ordered: bool = False,
        lease_ms: int = 10_000,
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(
            group=group, streams=streams, consumer=consumer, count=count, block_ms=block_ms,
            claim_idle_ms=claim_idle_ms, max_deliveries=max_deliveries, dedup=dedup,
            dedup_ttl_s=dedup_ttl_s, start_id=start_id, ordered=ordered, lease_ms=lease_ms,
        )
        self.handler = handler
        self.stop = stop or threading.Event()
        self._r = redisconn.client(redis_url, timeout=block_ms / 1000 + 10)

    def _stopped(self) -> bool:
        return self.stop.is_set()

    def ensure_groups(self) -> None:
        """Create the group on every stream (MKSTREAM) unless it exists."""
        self._drive(self._ensure_groups())

    def run(self, *, limit: int | None = None, timeout: float | None = None) -> ConsumerStats:
        """Consume until stopped, `limit` entries acked, or `timeout` seconds; return the stats."""
        return self._drive(self._run(limit, timeout))

    def step(self, *, block_ms: int | None = None) -> int:
        """Reclaim stale entries when due, else read new ones; handle them; return how many."""
        return self._drive(self._step(block_ms))

    def close(self) -> None:
        """Release the partitions this consumer owns (ordered), then close the connection."""
        self._drive(self._leave())
        self._r.close()

    def _drive(self, steps: Steps[T]) -> T:
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                todo = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            reply, error = None, None
            if isinstance(todo, Handle):
                reply = []
                for entry in todo.entries:
                    if self._halt(todo):
                        break
                    try:
                        if "traceparent" in entry.fields:  # continue the producer's trace
                            with tracing.consumer_span(entry.fields, stream=entry.stream,
                                                       entry_id=entry.id):
                                self.handler(entry)
                        else:
                            self.handler(entry)
                        reply.append(None)
                    except Exception as e:
                        reply.append(e)
                        if todo.ordered:
                            break
            elif isinstance(todo, Sleep):
                reply = self.stop.wait(todo.seconds)
            else:
                try:
                    reply = self._execute(todo)
                except REDIS_ERRORS as e:
                    error = e

    def _execute(self, todo: Call | Multi) -> Any:
        if isinstance(todo, Call):
            return getattr(self._r, todo.method)(*todo.args, **todo.kwargs)
        pipe = self._r.pipeline(transaction=True)
        for c in todo.calls:
            getattr(pipe, c.method)(*c.args, **c.kwargs)
        return pipe.execute()


class AsyncConsumer(_Group):
    """The same consumer on redis.asyncio: `await run()` in a task, an async handler.

    Stop it by setting `stop` (an asyncio.Event) or by cancelling the task; either way
    what was not acknowledged stays pending for XAUTOCLAIM.
    """

    def __init__(
        self,
        *,
        redis_url: str,
        group: str,
        streams: Sequence[str],
        handler: AsyncHandler,
        consumer: str | None = None,
        count: int = 100,
        block_ms: int = 1000,
        claim_idle_ms: int = 30_000,
        max_deliveries: int = 5,
        dedup: bool = False,
        dedup_ttl_s: float = 86_400.0,
        start_id: str = "$",
        ordered: bool = False,
        lease_ms: int = 10_000,
        stop: asyncio.Event | None = None,
    ) -> None:
        super().__init__(
            group=group, streams=streams, consumer=consumer, count=count, block_ms=block_ms,
            claim_idle_ms=claim_idle_ms, max_deliveries=max_deliveries, dedup=dedup,
            dedup_ttl_s=dedup_ttl_s, start_id=start_id, ordered=ordered, lease_ms=lease_ms,
        )
        self.handler = handler
        self.stop = stop or asyncio.Event()
        self._r = redisconn.async_client(redis_url, timeout=block_ms / 1000 + 10)

    def _stopped(self) -> bool:
        return self.stop.is_set()

    async def ensure_groups(self) -> None:
        """Create the group on every stream (MKSTREAM) unless it exists."""
        await self._drive(self._ensure_groups())

    async def run(
        self, *, limit: int | None = None, timeout: float | None = None
    ) -> ConsumerStats:
        """Consume until stopped, `limit` entries acked, or `timeout` seconds; return the stats."""
        return await self._drive(self._run(limit, timeout))

    async def step(self, *, block_ms: int | None = None) -> int:
        """Reclaim stale entries when due, else read new ones; handle them; return how many."""
        return await self._drive(self._step(block_ms))

    async def aclose(self) -> None:
        """Release the partitions this consumer owns (ordered), then close the connection."""
        await self._drive(self._leave())
        await self._r.aclose()

    async def _drive(self, steps: Steps[T]) -> T:
        reply: Any = None
        error: BaseException | None = None
        while True:
            try:
                todo = steps.send(reply) if error is None else steps.throw(error)
            except StopIteration as done:
                result: T = done.value
                return result
            reply, error = None, None
            if isinstance(todo, Handle):
                reply = []
                for entry in todo.entries:
                    if self._halt(todo):
                        break
                    try:
                        if "traceparent" in entry.fields:  # continue the producer's trace
                            with tracing.consumer_span(entry.fields, stream=entry.stream,
                                                       entry_id=entry.id):
                                await self.handler(entry)
                        else:
                            await self.handler(entry)
                        reply.append(None)
                    except Exception as e:
                        reply.append(e)
                        if todo.ordered:
                            break
            elif isinstance(todo, Sleep):
                try:
                    await asyncio.wait_for(self.stop.wait(), todo.seconds)
                    reply = True
                except TimeoutError:
                    reply = False
            else:
                try:
                    reply = await self._execute(todo)
                except REDIS_ERRORS as e:
                    error = e

    async def _execute(self, todo: Call | Multi) -> Any:
        if isinstance(todo, Call):
            return await getattr(self._r, todo.method)(*todo.args, **todo.kwargs)
        async with self._r.pipeline(transaction=True) as pipe:
            for c in todo.calls:
                getattr(pipe, c.method)(*c.args, **c.kwargs)
            return await pipe.execute()


class _StatsCollector(Collector):
    def __init__(self, consumers: list[_Group]) -> None:
        self.consumers = consumers

    def collect(self) -> Iterator[CounterMetricFamily]:
        for f in fields(ConsumerStats):
            family = CounterMetricFamily(
                f"core_consumer_{f.name}", f"Consumer entries: {f.name.replace('_', ' ')}",
                labels=["group", "consumer"],
            )
            for c in self.consumers:
                family.add_metric([c.group, c.name], getattr(c.stats, f.name))
            yield family


def consumer_registry(consumers: Iterable[Consumer | AsyncConsumer]) -> CollectorRegistry:
    """Return a registry exporting the counters of `consumers` (core_consumer_*_total)."""
    registry = CollectorRegistry()
    registry.register(_StatsCollector(list(consumers)))
    return registry
