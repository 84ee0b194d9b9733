"""The consumer on redis.asyncio (`AsyncConsumer`): the same steps, an async driver.

On a Redis Cluster (INFO cluster on the URL's node) it uses redis.asyncio's cluster client
(`redisconn.open_async_client`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, TypeVar

import redis.asyncio
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from cdc.consumers.entry import AsyncHandler, ConsumerStats
from cdc.consumers.group import Group
from cdc.consumers.steps import REDIS_ERRORS, Call, Connect, Handle, Multi, Pipe, Sleep, Steps
from cdc.observe import tracing
from cdc.streams import redisconn, urls

T = TypeVar("T")


class AsyncConsumer(Group):
    """The same consumer on redis.asyncio: `await run()` in a task, an async handler.

    Stop it by setting `stop` (an asyncio.Event) or by cancelling the task; either way
    what was not acknowledged stays pending for XAUTOCLAIM.
    """

    def __init__(
        self,
        *,
        redis_url: urls.Url,
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
        self._url = redis_url
        self._timeout = block_ms / 1000 + 10
        self._r: redis.asyncio.Redis | AsyncRedisCluster | None = None  # opened by Connect

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
        if self._r is not None:
            await self._drive(self._leave())
            await self._r.aclose()

    async def _open(self) -> bool:
        if self._r is None:
            self._r = await redisconn.open_async_client(self._url, timeout=self._timeout)
        return isinstance(self._r, AsyncRedisCluster)

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
                reply = await self._run_handler(todo)
            elif isinstance(todo, Sleep):
                try:
                    await asyncio.wait_for(self.stop.wait(), todo.seconds)
                    reply = True
                except TimeoutError:
                    reply = False
            else:
                try:
                    reply = (await self._open() if isinstance(todo, Connect)
                             else await self._execute(todo))
                except REDIS_ERRORS as e:
                    error = e

    async def _run_handler(self, todo: Handle) -> list[Exception | None]:
        reply: list[Exception | None] = []
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
        return reply

    async def _execute(self, todo: Call | Multi | Pipe) -> Any:
        if self._r is None:
            await self._open()
        r: Any = self._r
        if isinstance(todo, Call):
            return await getattr(r, todo.method)(*todo.args, **todo.kwargs)
        async with r.pipeline(transaction=isinstance(todo, Multi)) as pipe:
            for c in todo.calls:
                getattr(pipe, c.method)(*c.args, **c.kwargs)
            return await pipe.execute()
