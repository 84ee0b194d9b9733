"""A consumer group member's life: connect, create the groups, step until stopped, leave.

`Group` joins the plain steps (plain.py) and the ordered ones (ordered.py); the drivers
(worker.py for redis-py, aio.py for redis.asyncio) run its generators with their client.
A Redis error is retried with backoff, a vanished group (NOGROUP) is created again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis

from cdc.backoff import Backoff
from cdc.consumers.entry import ConsumerStats
from cdc.consumers.ordered import OrderedSteps
from cdc.consumers.plain import PlainSteps
from cdc.consumers.steps import REDIS_ERRORS, Call, Connect, Sleep, Steps
from cdc.errors import SinkError
from cdc.pipeline.route import partition_stream
from cdc.streams import groups, keys, redisconn

log = logging.getLogger(__name__)


class Group(PlainSteps, OrderedSteps):
    """What both consumers share: configuration, state, counters and the logic as Steps."""

    def _connect(self) -> Steps[None]:
        if self.cluster is None:
            self.cluster = bool((yield Connect()))

    def _ensure_groups(self) -> Steps[None]:
        try:
            yield from self._connect()
        except REDIS_ERRORS as e:
            raise redisconn.translate(e, "connect") from None
        if self.leases is not None and not self.leases.streams:
            yield from self._resolve_partitions()
        for stream in self.streams:
            try:
                yield Call("xgroup_create", (stream, self.group),
                           {"id": self.start_id, "mkstream": True})
            except redis.ResponseError as e:
                if not groups.is_busygroup(e):
                    raise redisconn.translate(e, "XGROUP CREATE") from None
            except REDIS_ERRORS as e:
                raise redisconn.translate(e, "XGROUP CREATE") from None
        try:
            yield from self.dedup_set.migrate(self.streams)
        except REDIS_ERRORS as e:
            raise redisconn.translate(e, "dedup migration") from None

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
            if self.cluster is None or (self.leases is not None and not self.leases.streams):
                yield from self._ensure_groups()  # step() before run() or ensure_groups()
            if self.leases is not None:
                return (yield from self._ordered_step(self.leases, block))
            return (yield from self._plain_step(block))
        except redis.ResponseError as e:
            if "NOGROUP" in str(e):  # stream deleted or Redis lost its data: start again
                log.warning("group %s vanished (%s); re-creating it", self.group, e)
                yield from self._ensure_groups()
                return 0
            raise redisconn.translate(e, "XREADGROUP") from None
        except REDIS_ERRORS as e:
            raise redisconn.translate(e, "XREADGROUP") from None
