"""AsyncConsumer on redis.asyncio: the sync consumer's behaviour, driven by the same steps."""

from __future__ import annotations

import asyncio
import contextlib
import time

import redis

from cdc.consumers.worker import AsyncConsumer, Consumer, Entry
from cdc.streams import keys
from devkit.localservers import LocalRedis
from tests.test_consumer import STREAM, fill, pending


def test_async_handles_acks_in_order_and_dedups(redis_url: str, rds: redis.Redis) -> None:
    ids = fill(rds, 120)
    fill(rds, 5, start=3)  # ev-3..ev-7 republished
    seen: list[str] = []

    async def handler(e: Entry) -> None:
        await asyncio.sleep(0)
        seen.append(e.event_id)

    async def main() -> tuple[int, int, int]:
        c = AsyncConsumer(redis_url=redis_url, group="g", streams=[STREAM], start_id="0",
                          handler=handler, count=40, dedup=True)
        try:
            stats = await c.run(limit=125, timeout=20)
        finally:
            await c.aclose()
        return stats.handled, stats.duplicates, stats.acked

    assert asyncio.run(main()) == (120, 5, 125)
    assert seen == ids and pending(rds, "g") == 0
    assert rds.zcard(keys.consumer_seen(STREAM, "g")) == 120


def test_async_failing_entry_is_reclaimed_then_dead_lettered(
    redis_url: str, rds: redis.Redis
) -> None:
    fill(rds, 10)
    attempts: dict[str, int] = {}

    async def handler(e: Entry) -> None:
        attempts[e.event_id] = attempts.get(e.event_id, 0) + 1
        if e.event_id == "ev-4":
            raise ValueError("cannot handle ev-4")

    async def main() -> tuple[int, int, int, int]:
        c = AsyncConsumer(redis_url=redis_url, group="g", streams=[STREAM], start_id="0",
                          handler=handler, claim_idle_ms=100, block_ms=50, max_deliveries=2)
        try:
            s = await c.run(limit=10, timeout=20)
        finally:
            await c.aclose()
        return s.claimed, s.failed, s.dead_lettered, s.acked

    assert asyncio.run(main()) == (2, 2, 1, 10)
    assert attempts["ev-4"] == 2
    dead = rds.xrange("axiom:dlq:events")[0][1]
    assert dead["event_id"] == "ev-4" and "cannot handle ev-4" in dead["error"]


def test_async_and_sync_consumers_share_one_group(redis_url: str, rds: redis.Redis) -> None:
    ids = fill(rds, 200)
    by_async: list[str] = []
    by_sync: list[str] = []

    async def handler(e: Entry) -> None:
        by_async.append(e.event_id)

    async def main() -> None:
        a = AsyncConsumer(redis_url=redis_url, group="g", streams=[STREAM], start_id="0",
                          consumer="a", handler=handler, count=30, block_ms=100)
        s = Consumer(redis_url=redis_url, group="g", streams=[STREAM], start_id="0",
                     consumer="s", handler=lambda e: by_sync.append(e.event_id), count=30,
                     block_ms=100)
        try:
            await a.ensure_groups()
            while len(by_async) + len(by_sync) < 200:
                await a.step(block_ms=10)
                await asyncio.to_thread(s.step, block_ms=10)
        finally:
            await a.aclose()
            s.close()

    asyncio.run(main())
    assert sorted(by_async + by_sync) == sorted(ids) and by_async and by_sync
    assert pending(rds, "g") == 0


def test_async_stop_event_and_cancel_end_a_blocking_consumer_quickly(redis_url: str) -> None:
    async def noop(e: Entry) -> None:
        return None

    async def main() -> tuple[float, float]:
        stop = asyncio.Event()
        c = AsyncConsumer(redis_url=redis_url, group="g", streams=[STREAM], handler=noop,
                          block_ms=200, stop=stop)
        task = asyncio.create_task(c.run())
        await asyncio.sleep(0.3)
        t0 = time.monotonic()
        stop.set()
        await asyncio.wait_for(task, 2)
        stopped = time.monotonic() - t0
        task = asyncio.create_task(c.run())  # cancelling works too
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        cancelled = time.monotonic() - t0
        await c.aclose()
        return stopped, cancelled

    stopped, cancelled = asyncio.run(main())
    assert stopped < 1 and cancelled < 0.5


def test_async_consumer_rides_out_a_redis_restart() -> None:
    with LocalRedis() as server:
        rds = redis.Redis.from_url(server.url, decode_responses=True)
        seen: list[str] = []

        async def handler(e: Entry) -> None:
            seen.append(e.event_id)

        async def main() -> int:
            stop = asyncio.Event()
            c = AsyncConsumer(redis_url=server.url, group="g", streams=[STREAM],
                              start_id="0", handler=handler, block_ms=100, stop=stop)
            task = asyncio.create_task(c.run())
            fill(rds, 5)
            while len(seen) < 5:
                await asyncio.sleep(0.02)
            await asyncio.to_thread(server.kill)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(server.start)  # no AOF: the group is gone (NOGROUP)
            await asyncio.to_thread(fill, rds, 5, start=5)
            deadline = time.monotonic() + 20
            while len(seen) < 10 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            await task
            await c.aclose()
            return c.stats.redis_errors

        errors = asyncio.run(main())
        rds.close()
    assert seen == [f"ev-{i}" for i in range(10)] and errors > 0


def test_an_event_twice_in_one_batch_is_handled_once_unless_the_first_copy_fails(
    redis_url: str, rds: redis.Redis
) -> None:
    for group, fail_first in (("ok", False), ("flaky", True)):
        rds.delete(STREAM)
        fill(rds, 2)
        fill(rds, 1, start=1)  # ev-1 again, in the same batch
        fill(rds, 1, start=2)
        calls: list[str] = []

        def handler(e: Entry, fail_first: bool = fail_first, calls: list[str] = calls) -> None:
            calls.append(e.event_id)
            if fail_first and calls.count("ev-1") == 1 and e.event_id == "ev-1":
                raise ValueError("first copy fails")

        c = Consumer(redis_url=redis_url, group=group, streams=[STREAM], start_id="0",
                     handler=handler, dedup=True, count=10, claim_idle_ms=100, block_ms=50)
        stats = c.run(limit=4, timeout=10)
        c.close()
        if fail_first:  # the second copy is the retry; the failed one, reclaimed, a duplicate
            assert calls == ["ev-0", "ev-1", "ev-2", "ev-1"]
            assert (stats.handled, stats.failed, stats.duplicates) == (3, 1, 1)
        else:
            assert calls == ["ev-0", "ev-1", "ev-2"]
            assert (stats.handled, stats.duplicates) == (3, 1)
        assert pending(rds, group) == 0
