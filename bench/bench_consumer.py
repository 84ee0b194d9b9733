"""Consumer throughput: entries/s handled and acked by cdc.consumers.worker (issues 7 and 15).

A throwaway redis-server holds one stream of relay-shaped entries; each scenario reads all
of it through a fresh consumer group with a no-op handler, until every entry is acked.
Then the same entries on 8 partitions (as `CDC_ROUTES=*=axiom:core:events/8` routes them)
through ordered consumers (`ordered=True`), 1 or 4 processes, with a no-op handler and
with one that waits 0.2 ms (a handler doing I/O).

    .venv/bin/python -m bench.bench_consumer [--entries 100000] [--io-entries 20000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any

import orjson
import redis

from cdc.consumers.worker import Consumer, Entry
from cdc.pipeline.route import partition, partition_stream
from cdc.streams import keys
from devkit.localservers import LocalRedis

STREAM = "axiom:core:events"


def fill(url: str, n: int) -> None:
    """Add `n` entries with the relay's fields and a ~120-byte payload."""
    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, _fields(i, f"case-{i}"))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    r.close()


def _fields(i: int, agg: str) -> dict[Any, Any]:
    return {
        "event_id": f"00000000-0000-4000-8000-{i:012d}", "event_type": "CASE_CREATED",
        "aggregate_type": "case", "aggregate_id": agg, "tenant_id": "tenant-1",
        "payload": orjson.dumps({"case_id": agg, "status": "OPEN",
                                 "idempotency_key": f"k-{i}"}).decode(),
        "idempotency_key": f"k-{i}", "created_at": "2026-11-26 10:00:00.123456+00",
        "commit_lsn": "0/1A2B3C4D",
    }


def redis_cpu(url: str) -> float:
    """Return the CPU seconds redis-server has used (INFO cpu, user + sys)."""
    r = redis.Redis.from_url(url)
    info: Any = r.info("cpu")
    r.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def consume(url: str, group: str, n: int, count: int, dedup: bool, name: str = "c1") -> tuple[
    float, float, int
]:
    """Consume until `n` entries of the group are acked; return (seconds, cpu seconds, acked)."""
    c = Consumer(redis_url=url, group=group, streams=[STREAM], handler=lambda e: None,
                 consumer=name, count=count, dedup=dedup, block_ms=100, start_id="0")
    c.ensure_groups()
    t0, cpu0 = time.perf_counter(), time.process_time()
    last, idle = t0, 0
    while c.stats.acked < n and idle < 3:  # with several processes, stop once drained
        if c.step():
            last, idle = time.perf_counter(), 0
        else:
            idle += 1
    took, cpu = last - t0, time.process_time() - cpu0
    c.close()
    return took, cpu, c.stats.acked


def consume_io(url: str, group: str, n: int) -> tuple[float, float, int]:
    """Like `consume`, with a handler that waits 0.2 ms per entry."""
    c = Consumer(redis_url=url, group=group, streams=[STREAM],
                 handler=lambda e: time.sleep(0.0002), count=100, block_ms=100, start_id="0")
    c.ensure_groups()
    t0, cpu0 = time.perf_counter(), time.process_time()
    while c.stats.acked < n:
        c.step()
    took, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    c.close()
    return took, cpu, c.stats.acked


def _worker(args: tuple[str, str, int, int, str]) -> tuple[float, float, int]:
    url, group, n, count, name = args
    return consume(url, group, n, count, False, name)


PARTITIONS = 8


def fill_partitions(url: str, n: int) -> None:
    """Add `n` entries of n // 10 aggregates to the 8 partitions, as the relay routes them."""
    r = redis.Redis.from_url(url)
    r.set(keys.partitions(STREAM), PARTITIONS)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        agg = f"case-{i % max(n // 10, 1)}"
        pipe.xadd(partition_stream(STREAM, partition("tenant-1", agg, PARTITIONS)),
                  _fields(i, agg))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    r.close()


def _ordered_worker(args: tuple[str, str, str, float]) -> tuple[float, int]:
    """Consume `group` ordered until bench:stop:<group> is set; return (cpu s, acked)."""
    url, group, name, sleep_s = args

    def handle(_: Entry) -> None:
        if sleep_s:
            time.sleep(sleep_s)

    c = Consumer(redis_url=url, group=group, streams=[STREAM], handler=handle, consumer=name,
                 count=100, block_ms=20, start_id="$", ordered=True, lease_ms=3000)
    r = redis.Redis.from_url(url)
    cpu0, check = time.process_time(), 0.0
    while True:
        c.step()
        if time.monotonic() >= check:
            if r.exists(f"bench:stop:{group}"):
                break
            check = time.monotonic() + 0.2
    cpu = time.process_time() - cpu0
    c.close()
    r.close()
    return cpu, c.stats.acked


def consume_ordered(url: str, group: str, n: int, procs: int, sleep_s: float) -> tuple[
    float, float, float
]:
    """Time `procs` ordered consumers through every entry of the 8 partitions.

    They join an empty group (created at the end of each partition) and settle on a fair
    share; then the group is rewound to the first entry and the clock runs until nothing
    is pending or unread. Return (seconds, consumer CPU µs per entry, settling included,
    Redis CPU µs per entry over the timed part).
    """
    r = redis.Redis.from_url(url, decode_responses=True)
    parts = [partition_stream(STREAM, p) for p in range(PARTITIONS)]
    share = sorted(PARTITIONS // procs + (k < PARTITIONS % procs) for k in range(procs))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(procs) as pool:
        res = pool.map_async(_ordered_worker, [(url, group, f"o{k}", sleep_s)
                                               for k in range(procs)])
        while True:
            owners = [str(r.get(keys.lease(s, group))).split(" ")[0] for s in parts]
            counts = sorted(owners.count(o) for o in set(owners) if o != "None")
            if counts == share:
                break
            time.sleep(0.05)
        t0, rcpu = time.perf_counter(), redis_cpu(url)
        for s in parts:
            r.xgroup_setid(s, group, "0")
        while any(g["name"] == group and (g["lag"] or g["pending"])
                  for s in parts for g in r.xinfo_groups(s)):
            time.sleep(0.01)
        took, rcpu = time.perf_counter() - t0, redis_cpu(url) - rcpu
        r.set(f"bench:stop:{group}", 1)
        got = res.get(timeout=30)
    r.close()
    assert sum(a for _, a in got) == n, got
    return took, sum(c for c, _ in got) / n * 1e6, rcpu / n * 1e6


def main() -> None:
    """Run every scenario and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--io-entries", type=int, default=20_000)
    args = ap.parse_args()
    n, n_io = args.entries, args.io_entries
    rows: list[tuple[str, float, float, float]] = []
    with LocalRedis() as server:
        fill(server.url, n)
        for i, (count, dedup) in enumerate([(10, False), (100, False), (500, False),
                                            (100, True)]):
            r0 = redis_cpu(server.url)
            took, cpu, acked = consume(server.url, f"g{i}", n, count, dedup)
            assert acked == n, (acked, n)
            rows.append((f"1 process, COUNT {count}" + (", dedup on" if dedup else ""),
                         n / took, cpu / n * 1e6, (redis_cpu(server.url) - r0) / n * 1e6))
        procs = 2
        ctx = multiprocessing.get_context("spawn")
        r0 = redis_cpu(server.url)
        with ctx.Pool(procs) as pool:
            got = pool.map(_worker, [(server.url, "gp", n, 100, f"p{k}") for k in range(procs)])
            took = max(t for t, _, _ in got)  # until the last entry was acked
        # each process stops once the group is drained; together they acked every entry
        assert sum(a for _, _, a in got) == n, got
        rows.append((f"{procs} processes, COUNT 100 (aggregate)", n / took,
                     sum(c for _, c, _ in got) / n * 1e6,
                     (redis_cpu(server.url) - r0) / n * 1e6))
    with LocalRedis() as server:
        fill_partitions(server.url, n)
        for procs in (1, 4):
            took, us, rus = consume_ordered(server.url, f"o{procs}", n, procs, 0.0)
            rows.append((f"ordered, 8 partitions, {procs} process(es), COUNT 100", n / took, us,
                         rus))
    with LocalRedis() as server:
        fill(server.url, n_io)
        r0 = redis_cpu(server.url)
        took, cpu, acked = consume_io(server.url, "io", n_io)
        assert acked == n_io
        rows.append((f"1 process, 1 stream, 0.2 ms handler ({n_io} entries)", n_io / took,
                     cpu / n_io * 1e6, (redis_cpu(server.url) - r0) / n_io * 1e6))
    with LocalRedis() as server:
        fill_partitions(server.url, n_io)
        for procs in (1, 4):
            took, us, rus = consume_ordered(server.url, f"io{procs}", n_io, procs, 0.0002)
            rows.append((f"ordered, 8 partitions, {procs} process(es), 0.2 ms handler"
                         f" ({n_io} entries)", n_io / took, us, rus))
    print(f"{n} entries, no-op handler, XACK per batch (one MULTI)\n")
    print("| scenario | entries/s handled+acked | consumer CPU µs/entry | Redis CPU µs/entry |")
    print("|---|---:|---:|---:|")
    for name, rate, us, rus in rows:
        print(f"| {name} | {rate:,.0f} | {us:.1f} | {rus:.1f} |")

if __name__ == "__main__":
    main()
