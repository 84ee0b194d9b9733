"""Consumer throughput per process: entries/s handled and acked by cdc.consumer (issue 7).

A throwaway redis-server holds one stream of relay-shaped entries; each scenario reads all
of it through a fresh consumer group with a no-op handler, until every entry is acked.

    .venv/bin/python -m bench.bench_consumer [--entries 100000]
"""

from __future__ import annotations

import argparse
import multiprocessing
import time

import orjson
import redis

from cdc.consumer import Consumer
from cdc.localservers import LocalRedis

STREAM = "axiom:core:events"


def fill(url: str, n: int) -> None:
    """Add `n` entries with the relay's fields and a ~120-byte payload."""
    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        pipe.xadd(STREAM, {
            "event_id": f"00000000-0000-4000-8000-{i:012d}", "event_type": "CASE_CREATED",
            "aggregate_type": "case", "aggregate_id": f"case-{i}", "tenant_id": "tenant-1",
            "payload": orjson.dumps({"case_id": f"case-{i}", "status": "OPEN",
                                     "idempotency_key": f"k-{i}"}).decode(),
            "idempotency_key": f"k-{i}", "created_at": "2026-11-26 10:00:00.123456+00",
            "commit_lsn": "0/1A2B3C4D",
        })
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    r.close()


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


def _worker(args: tuple[str, str, int, int, str]) -> tuple[float, float, int]:
    url, group, n, count, name = args
    return consume(url, group, n, count, False, name)


def main() -> None:
    """Run every scenario and print a markdown table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    n = ap.parse_args().entries
    rows = []
    with LocalRedis() as server:
        fill(server.url, n)
        for i, (count, dedup) in enumerate([(10, False), (100, False), (500, False),
                                            (100, True)]):
            took, cpu, acked = consume(server.url, f"g{i}", n, count, dedup)
            assert acked == n, (acked, n)
            rows.append((f"1 process, COUNT {count}" + (", dedup on" if dedup else ""),
                         n / took, cpu / n * 1e6))
        procs = 2
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(procs) as pool:
            got = pool.map(_worker, [(server.url, "gp", n, 100, f"p{k}") for k in range(procs)])
            took = max(t for t, _, _ in got)  # until the last entry was acked
        # each process stops once the group is drained; together they acked every entry
        assert sum(a for _, _, a in got) == n, got
        rows.append((f"{procs} processes, COUNT 100 (aggregate)", n / took,
                     sum(c for _, c, _ in got) / n * 1e6))
    print(f"{n} entries, no-op handler, XACK per batch (one MULTI)\n")
    print("| scenario | entries/s handled+acked | consumer CPU µs/entry |")
    print("|---|---:|---:|")
    for name, rate, us in rows:
        print(f"| {name} | {rate:,.0f} | {us:.1f} |")


if __name__ == "__main__":
    main()
