"""A consumer-group worker: read, handle, acknowledge; reclaim what dead consumers left behind.

    XREADGROUP ... BLOCK     new entries for this consumer
    handler(entry)           your code; an exception leaves the entry pending
    XACK (+ ZADD seen)       one MULTI per batch, after the handlers succeeded
    XAUTOCLAIM               entries pending longer than `claim_idle_ms` (a dead or slow
                             consumer, or a failed handler) are taken over and handled again
    XADD dlq + XACK          an entry delivered more than `max_deliveries` times is moved to
                             axiom:dlq:events with the reason, in one MULTI

Delivery is at least once: a crash after the handler and before the XACK hands the entry
to another consumer. `dedup=True` skips entries whose `event_id` this group already handled
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
from collections.abc import Awaitable, Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeAlias, TypeVar

import orjson
import redis
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from cdc import keys, redisconn, tracing
from cdc.backoff import Backoff
from cdc.errors import SinkError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as a handler sees it."""

    stream: str
    id: str
    fields: dict[str, str]
    deliveries: int = 1

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


def default_name() -> str:
    """Return a consumer name unique to this process: host-pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Call:
    """A Redis command for the driver: `client.<method>(*args, **kwargs)`."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Multi:
    """Commands the driver sends as one MULTI/EXEC."""

    calls: tuple[Call, ...]


@dataclass(frozen=True, slots=True)
class Handle:
    """Run the handler on each entry in order, until stopped.

    The driver sends back, per entry it ran, None or the exception the handler raised.
    """

    entries: list[Entry]


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait `seconds` unless stopped; the driver sends back True when stopped."""

    seconds: float


Steps: TypeAlias = Generator[Call | Multi | Handle | Sleep, Any, T]
REDIS_ERRORS = (redis.RedisError, OSError)


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

    def _stopped(self) -> bool:
        raise NotImplementedError

    def _ensure_groups(self) -> Steps[None]:
        for stream in self.streams:
            try:
                yield Call("xgroup_create", (stream, self.group),
                           {"id": self.start_id, "mkstream": True})
            except redis.ResponseError as e:
                if "BUSYGROUP" not in str(e):
                    raise redisconn.translate(e, "XGROUP CREATE") from None
            except REDIS_ERRORS as e:
                raise redisconn.translate(e, "XGROUP CREATE") from None

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
        return self.stats

    def _step(self, block_ms: int | None) -> Steps[int]:
        try:
            n = 0
            if time.monotonic() >= self._next_claim:
                n = yield from self._claim()
            if n == 0:
                n = yield from self._read(self.block_ms if block_ms is None else block_ms)
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
            n += yield from self._handle([Entry(stream, eid, f or {}) for eid, f in entries])
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
            n += yield from self._handle(
                [Entry(stream, eid, f, counts.get(eid, 2)) for eid, f in live])
        if done:
            self._next_claim = time.monotonic() + max(self.claim_idle_ms / 2000, 0.05)
            if self.dedup:
                yield Call("zremrangebyscore",
                           (self._seen_key, "-inf", time.time() - self.dedup_ttl_s))
        return n

    def _handle(self, batch: list[Entry]) -> Steps[int]:
        """Handle a batch in order, then acknowledge what succeeded in one MULTI."""
        self.stats.delivered += len(batch)
        seen = yield from self._already_seen(batch)
        acks: list[str] = []
        handled_ids: list[str] = []
        pending: list[Entry] = []
        for entry in batch:
            if entry.deliveries > self.max_deliveries:
                yield self._dead_letter(entry)
                self.stats.dead_lettered += 1
                self.stats.acked += 1
            else:
                pending.append(entry)
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
            errors: list[Exception | None] = (yield Handle(todo)) if todo else []
            for entry, error in zip(todo, errors, strict=False):
                if error is not None:
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
            # Stopped: what the driver did not reach stays pending; XAUTOCLAIM hands it on.
            pending = later if len(errors) == len(todo) else []
        if acks:
            calls = [Call("xack", (batch[0].stream, self.group, *acks))]
            if self.dedup and handled_ids:
                calls.insert(0, Call("zadd", (self._seen_key, dict.fromkeys(handled_ids,
                                                                            time.time()))))
            yield Multi(tuple(calls))
            self.stats.acked += len(acks)
        return len(batch)

    def _already_seen(self, batch: list[Entry]) -> Steps[set[str]]:
        ids = [e.event_id for e in batch if e.event_id] if self.dedup else []
        if not ids:
            return set()
        scores: Any = yield Call("zmscore", (self._seen_key, ids))
        return {eid for eid, score in zip(ids, scores, strict=True) if score is not None}

    def _dead_letter(self, entry: Entry) -> Multi:
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
        return Multi((Call("xadd", (keys.DLQ, body)),
                      Call("xack", (entry.stream, self.group, entry.id))))


class Consumer(_Group):
    """Read `streams` as `consumer` of `group` and hand each entry to `handler`."""

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
        stop: threading.Event | None = None,
    ) -> None:
        super().__init__(
            group=group, streams=streams, consumer=consumer, count=count, block_ms=block_ms,
            claim_idle_ms=claim_idle_ms, max_deliveries=max_deliveries, dedup=dedup,
            dedup_ttl_s=dedup_ttl_s, start_id=start_id,
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
        """Close the Redis connection."""
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
                    if self.stop.is_set():
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
        stop: asyncio.Event | None = None,
    ) -> None:
        super().__init__(
            group=group, streams=streams, consumer=consumer, count=count, block_ms=block_ms,
            claim_idle_ms=claim_idle_ms, max_deliveries=max_deliveries, dedup=dedup,
            dedup_ttl_s=dedup_ttl_s, start_id=start_id,
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
        """Close the Redis connection."""
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
                    if self.stop.is_set():
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
