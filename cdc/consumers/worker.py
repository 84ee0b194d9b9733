"""A consumer-group worker on redis-py (a thread): read, handle, acknowledge, reclaim.

    XREADGROUP ... BLOCK     new entries for this consumer (plain.py)
    handler(entry)           your code; an exception leaves the entry pending
    XACK (+ ZADD seen)       one MULTI per batch, after the handlers succeeded (handling.py)
    XAUTOCLAIM               entries pending longer than `claim_idle_ms` (a dead or slow
                             consumer, or a failed handler) are taken over and handled again
    DLQ + XACK               an entry over its failure budget is moved to axiom:dlq:events
                             with the reason, once (lua/dlq_add.lua), then acknowledged

Delivery is at least once: a crash after the handler and before the XACK hands the entry
to another consumer. `ordered=True` (partitioned routes): ordered.py; `dedup=True`: dedup.py.
On a Redis Cluster (CDC_REDIS_URL at any node, told apart by INFO cluster) the worker uses
redis-py's cluster client; every key a command or script touches with a stream shares the
stream's slot.

`Consumer` (here) and `AsyncConsumer` (aio.py, redis.asyncio, a task) share all of this:
the logic is written once as generators that yield what to do next (steps.py) and each
class only drives them with its own client, as psycopg's generators do. This module also
re-exports the public names: Entry, ConsumerStats, AsyncConsumer, consumer_registry.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, TypeVar

import redis
from redis.cluster import RedisCluster

from cdc.consumers.aio import AsyncConsumer
from cdc.consumers.entry import AsyncHandler, ConsumerStats, Entry, Handler, default_name
from cdc.consumers.group import Group
from cdc.consumers.metrics import consumer_registry
from cdc.consumers.steps import REDIS_ERRORS, Call, Connect, Handle, Multi, Pipe, Sleep, Steps
from cdc.errors import SinkError
from cdc.observe import tracing
from cdc.streams import redisconn, urls

__all__ = ["AsyncConsumer", "AsyncHandler", "Consumer", "ConsumerStats", "Entry", "Handler",
           "consumer_registry", "default_name"]
T = TypeVar("T")


class Consumer(Group):
    """Read `streams` as `consumer` of `group` and hand each entry to `handler`.

    `ordered=True`: `streams` name routes (e.g. axiom:core:events, published in N
    partitions); this consumer owns a fair share of the group's partitions through leases
    of `lease_ms`, and hands each aggregate's events over in commit order.
    """

    def __init__(
        self,
        *,
        redis_url: urls.Url,
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
        self._url = redis_url
        self._timeout = block_ms / 1000 + 10
        self._r: redisconn.Client | None = None  # opened by the first step (Connect)

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
        if self._r is not None:
            self._drive(self._leave())
            self._r.close()

    def _open(self) -> bool:
        if self._r is None:
            try:
                self._r = redisconn.open_client(self._url, timeout=self._timeout)
            except SinkError as e:
                raise redis.ConnectionError(str(e)) from None
        return isinstance(self._r, RedisCluster)

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
                reply = self._run_handler(todo)
            elif isinstance(todo, Sleep):
                reply = self.stop.wait(todo.seconds)
            else:
                try:
                    reply = self._open() if isinstance(todo, Connect) else self._execute(todo)
                except REDIS_ERRORS as e:
                    error = e

    def _run_handler(self, todo: Handle) -> list[Exception | None]:
        reply: list[Exception | None] = []
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
        return reply

    def _execute(self, todo: Call | Multi | Pipe) -> Any:
        if self._r is None:
            self._open()
        r: Any = self._r
        if isinstance(todo, Call):
            return getattr(r, todo.method)(*todo.args, **todo.kwargs)
        pipe = r.pipeline(transaction=isinstance(todo, Multi))
        for c in todo.calls:
            getattr(pipe, c.method)(*c.args, **c.kwargs)
        return pipe.execute()
