"""Past one Redis, in one run: drain rate and CPU per event of the relay and of Redis for

  single      one Redis, today's single stream (N = 1)
  partitions  one Redis, CDC_ROUTES='*=axiom:core:events/8'
  cluster     a 3-master Redis Cluster (3 replicas), N = 1
  replica     one primary with one replica, CDC_REDIS_MIN_REPLICAS=1 (WAIT per batch)

each drained from the same fresh backlog with `cdc run --once`, write-back on (no server
keeps an AOF, so only the topology differs); ratios to "single". Then commit → XREAD
latency at 1,000 events/s with min replicas 0 and 1. On two cores a cluster cannot add
throughput: what it shows is the cost per event.

    .venv/bin/python -m bench.bench_scale [--events 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import psycopg
import redis

from bench.bench_relay import backlog, latency, pct, run_once, start_relay
from cdc.pg import migrate, slots
from cdc.settings import SQL_DIR, Settings
from devkit.localservers import LocalPostgres, LocalRedis, LocalRedisCluster

ROUTES8 = "WATCH_*=axiom:watches,WORKER_*=axiom:workers,*=axiom:core:events/8"


def redis_cpu(ports: list[int]) -> float:
    """Return the CPU seconds the Redis servers on `ports` used so far."""
    total = 0.0
    for port in ports:
        with redis.Redis(port=port) as r:
            info = r.info("cpu")
            total += float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    return total


def flush(ports: list[int]) -> None:
    """Empty every master among `ports`."""
    for port in ports:
        with redis.Redis(port=port) as r:
            if r.info("replication")["role"] == "master":
                r.flushall()


def drain(
    pg: LocalPostgres, n: int, no: int, name: str, url: str, ports: list[int],
    extra: dict[str, str],
) -> dict[str, float]:
    """Drain a fresh backlog of `n` through one configuration; return rate and CPU."""
    slot = f"scale_{name}_{no}"
    slots.create(Settings(database_url=pg.dsn, slot=slot))  # type: ignore[arg-type]
    backlog(pg.dsn, n, f"{name}{no}")
    flush(ports)
    r0 = redis_cpu(ports)
    run = run_once(pg.dsn, url, slot, True, extra)
    redis_us = (redis_cpu(ports) - r0) * 1e6 / n
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute("TRUNCATE event_outbox")
    if run["code"] != 0:
        raise SystemExit(f"{name}: relay exited {run['code']}")
    return {"rate": n / run["streaming"], "relay_us": run["cpu_streaming"] * 1e6 / n,
            "redis_us": redis_us}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    with LocalPostgres() as pg, LocalRedis() as single, \
            LocalRedisCluster(appendonly=False) as cluster, \
            LocalRedis() as primary, \
            LocalRedis(args=("--replicaof", "127.0.0.1", str(primary.port))) as replica:
        migrate.apply(pg.dsn, SQL_DIR)
        configs: list[tuple[str, str, list[int], dict[str, str]]] = [
            ("single", single.url, [single.port], {}),
            ("partitions", single.url, [single.port], {"CDC_ROUTES": ROUTES8}),
            ("cluster", cluster.url, [n.port for n in cluster.nodes], {}),
            ("replica", primary.url, [primary.port, replica.port],
             {"CDC_REDIS_MIN_REPLICAS": "1"}),
        ]
        results: dict[str, list[dict[str, float]]] = {c[0]: [] for c in configs}
        for no in range(args.rounds):
            for name, url, ports, extra in configs:  # interleaved: drift hits all alike
                results[name].append(drain(pg, args.events, no, name, url, ports, extra))
        med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]}
               for k, v in results.items()}
        base = med["single"]
        print(f"drain of {args.events:,} events, write-back on, median of {args.rounds} rounds:")
        for name, res in med.items():
            print(f"  {name:10} {res['rate']:>9,.0f} events/s = {res['rate'] / base['rate']:.2f} x"
                  f" single; relay {res['relay_us']:.2f} us/event"
                  f" ({res['relay_us'] / base['relay_us']:.2f} x); Redis (all nodes)"
                  f" {res['redis_us']:.2f} us/event ({res['redis_us'] / base['redis_us']:.2f} x)")
        lat: dict[str, Any] = {}
        for mins in ("0", "1"):
            slot = f"scale_lat_{mins}"
            slots.create(Settings(database_url=pg.dsn, slot=slot))  # type: ignore[arg-type]
            ms = latency(pg.dsn, primary.url, args.seconds, 1000, lambda s=slot, m=mins:
                         start_relay(pg.dsn, primary.url, s, True,
                                     {"CDC_REDIS_MIN_REPLICAS": m}))
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            lat[mins] = (pct(ms, 50), pct(ms, 99))
            print(f"  latency @1000/s, min replicas {mins}: p50 {lat[mins][0]:.2f} ms,"
                  f" p99 {lat[mins][1]:.2f} ms")
        print(f"  p99 ratio, min replicas 1 / 0: {lat['1'][1] / lat['0'][1]:.2f} x")


if __name__ == "__main__":
    main()
