"""Consumers on a real Redis Cluster (six redis-server processes, started once here): a plain
group over streams on several masters (sync, async and `cdc consume`), ordered consumers on
a partitioned route, and Synapse's ontology cache, rebuilt and consumed, equal to one Redis.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from typing import Any

import orjson
import psycopg
import redis
from redis.cluster import RedisCluster

from cdc.consumers.worker import AsyncConsumer, Consumer, Entry
from cdc.domain import ontology_rebuild
from cdc.pipeline.route import partition, partition_stream
from cdc.settings import Settings
from cdc.streams import keys
from devkit.localservers import LocalRedisCluster
from tests.relayutil import STREAMS, cdc, relay_env, wait_for
from tests.test_ontology import assign, new_case
from tests.test_ordered_consumer import _check_order, _max_concurrent_owners

ROUTE = "axiom:core:events"
_MIXED = (  # 300 events, 100 per stream
    "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)"
    " SELECT 't1', 'x', 'a' || g, CASE g % 3 WHEN 0 THEN 'CASE_CREATED'"
    " WHEN 1 THEN 'WATCH_ALERT_TRIGGERED' ELSE 'WORKER_TASK_COMPLETED' END,"
    " jsonb_build_object('case_id', 'c', 'status', 'OPEN', 'watch_id', 'w', 'alert_id', 'a',"
    " 'severity', 'LOW', 'task_id', 't', 'worker_id', 'w', 'seq', g)"
    " FROM generate_series(1, 300) g"
)


def _pending(rc: RedisCluster, stream: str, group: str) -> int:
    return int(rc.xpending(stream, group)["pending"])


def test_plain_group_reads_every_stream_across_masters(
    cs: Settings, pg_dsn: str, rc: RedisCluster, cluster: LocalRedisCluster
) -> None:
    owners = {rc.get_node_from_key(s).name for s in STREAMS}
    assert len(owners) >= 2, "the streams all hash to one master: the test proves nothing"
    for s in STREAMS:  # the dedup set shares its stream's slot: one MULTI with the XACK
        assert rc.keyslot(keys.consumer_seen(s, "g")) == rc.keyslot(s)
    assert cdc(cs, "slot", "create").returncode == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(_MIXED)
    res = cdc(cs, "run", "--once")
    assert res.returncode == 0, res.stderr
    assert [rc.xlen(s) for s in STREAMS] == [100, 100, 100]

    seen: list[tuple[str, str]] = []
    c = Consumer(redis_url=cluster.url, group="g", streams=list(STREAMS), start_id="0",
                 dedup=True, count=40, block_ms=200,
                 handler=lambda e: seen.append((e.stream, e.event_id)))
    stats = c.run(limit=300, timeout=30)
    assert (stats.handled, stats.acked, stats.failed) == (300, 300, 0)
    assert len({eid for _, eid in seen}) == 300 and {s for s, _ in seen} == set(STREAMS)
    assert all(_pending(rc, s, "g") == 0 for s in STREAMS)
    assert sum(rc.zcard(keys.consumer_seen(s, "g")) for s in STREAMS) == 300

    # Redelivery: ten events republished to their streams are skipped, not handled again.
    again = [(s, rc.xrange(s, count=5)) for s in STREAMS[:2]]
    for s, entries in again:
        for _, fields in entries:
            rc.xadd(s, fields)
    # ...and an entry the handler fails on is dead-lettered once (the DLQ is on its own slot).
    rc.xadd(STREAMS[2], {"event_id": "bad", "event_type": "X", "payload": "{}"})
    attempts: list[str] = []

    def handler(e: Entry) -> None:
        attempts.append(e.event_id)
        if e.event_id == "bad":
            raise ValueError("cannot handle bad")

    c.close()
    c = Consumer(redis_url=cluster.url, group="g", streams=list(STREAMS), dedup=True,
                 handler=handler, block_ms=100, claim_idle_ms=100, max_deliveries=2)
    stats = c.run(limit=11, timeout=30)
    c.close()
    assert attempts == ["bad", "bad"]
    assert (stats.duplicates, stats.dead_lettered, stats.acked) == (10, 1, 11)
    dead = rc.xrange(keys.DLQ)
    assert [f["event_id"] for _, f in dead] == ["bad"] and "cannot handle" in dead[0][1]["error"]
    assert all(_pending(rc, s, "g") == 0 for s in STREAMS)

    # The asyncio consumer, another group: every stream, each event once.
    async def main() -> set[str]:
        got: set[str] = set()

        async def on_entry(e: Entry) -> None:
            got.add(e.event_id)

        a = AsyncConsumer(redis_url=cluster.url, group="ga", streams=list(STREAMS),
                          start_id="0", dedup=True, handler=on_entry, block_ms=200)
        try:
            s = await a.run(limit=311, timeout=30)
        finally:
            await a.aclose()
        assert (s.duplicates, s.acked) == (10, 311)
        return got

    assert len(asyncio.run(main())) == 301

    # `cdc consume` over the three streams of the cluster.
    done = subprocess.run(
        [sys.executable, "-m", "cdc", "consume", *[x for s in STREAMS for x in ("--stream", s)],
         "--group", "ops", "--from-start", "--quiet", "--count", "311", "--timeout", "30"],
        env=relay_env(cs), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "acked=311" in done.stderr, done.stderr


def test_ordered_consumers_on_a_partitioned_route(
    cs: Settings, pg_dsn: str, rc: RedisCluster, cluster: LocalRedisCluster
) -> None:
    parts = [partition_stream(ROUTE, p) for p in range(4)]
    assert len({rc.get_node_from_key(s).name for s in parts}) >= 2
    for s in parts:
        for k in (keys.lease(s, "g"), keys.fence(s, "g"), keys.failures(s, "g"),
                  keys.consumer_seen(s, "g")):
            assert rc.keyslot(k) == rc.keyslot(s), k
    assert cdc(cs, "slot", "create").returncode == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # 40 aggregates, 30 events each
        conn.execute(
            "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
            " payload) SELECT 't1', 'case', 'case-' || (g % 40), 'CASE_CREATED',"
            " jsonb_build_object('case_id', 'c', 'status', 'OPEN', 'seq', g / 40)"
            " FROM generate_series(0, 1199) g")
    res = cdc(cs, "run", "--once", CDC_ROUTES=f"*={ROUTE}/4")
    assert res.returncode == 0, res.stderr
    assert sum(rc.xlen(s) for s in parts) == 1200 and all(rc.xlen(s) for s in parts)

    rows: list[list[Any]] = []
    lock = threading.Lock()

    def make(name: str) -> Consumer:
        def handle(e: Entry) -> None:
            with lock:
                rows.append([name, e.stream, e.id, e.fields["aggregate_id"],
                             orjson.loads(e.fields["payload"])["seq"], e.fence,
                             time.monotonic(), e.deliveries])
            time.sleep(0.0005)

        return Consumer(redis_url=cluster.url, group="g", streams=[ROUTE], handler=handle,
                        consumer=name, count=20, block_ms=100, claim_idle_ms=200,
                        start_id="0", ordered=True, lease_ms=1000, dedup=True)

    stop = threading.Event()
    cs_ = [make(n) for n in ("c1", "c2", "c3")]
    for c in cs_:
        c.stop = stop
    threads = [threading.Thread(target=c.run) for c in cs_]
    for t in threads[:2]:
        t.start()
    wait_for(lambda: len(rows) >= 300, what="a quarter handled by two")
    threads[2].start()  # a third joins: partitions change hands mid-run
    wait_for(lambda: len({(r[1], r[2]) for r in rows}) >= 1200
             and sorted(len(c.leases.owned) for c in cs_ if c.leases) == [1, 1, 2],
             timeout=30, what="1200 handled, 2 + 1 + 1 owned")
    stop.set()
    for t in threads:
        t.join(10)
    for c in cs_:
        c.close()
    first, redelivered, violations = _check_order(rows)
    worst, tenures = _max_concurrent_owners(rows)
    assert violations == 0 and first == 1200, (first, redelivered, violations)
    assert worst == 1, "no partition had two owners at once"
    assert tenures > 4, "partitions changed hands"
    assert {r[0] for r in rows} == {"c1", "c2", "c3"}
    for _, stream, _, agg, *_ in rows:
        assert stream == partition_stream(ROUTE, partition("t1", agg, 4))
    assert all(_pending(rc, s, "g") == 0 for s in parts)
    assert not rc.exists(*[keys.lease(s, "g") for s in parts]), "close() released them"
    done = subprocess.run(
        [sys.executable, "-m", "cdc", "consume", "--stream", ROUTE, "--group", "ops",
         "--ordered", "--from-start", "--quiet", "--count", "1200", "--timeout", "30",
         "--lease-ms", "1000"],
        env=relay_env(cs), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "acked=1200" in done.stderr and "leases_acquired=4" in done.stderr


def test_ontology_rebuild_digest_and_consume_on_a_cluster_equal_one_redis(
    settings: Settings, cs: Settings, rds: redis.Redis, rc: RedisCluster
) -> None:
    dsn = settings.database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        a1, a2 = new_case(conn, "acme"), new_case(conn, "acme", "IN_PROGRESS")
        g1 = new_case(conn, "globex")
        conn.execute("UPDATE core.core_case SET status = 'CLOSED' WHERE id = %s", (a2,))
        assign(conn, "acme", a1, "approver", "Approver", "u1")
        assign(conn, "acme", a2, "approver", "Approver", "u2")
        assign(conn, "globex", g1, "owner", "Owner", "u9")
        single = ontology_rebuild.rebuild(conn, rds, settings).digests
        rc.script_flush()  # every master: NOSCRIPT, loaded, run again
        on_cluster = ontology_rebuild.rebuild(conn, rc, cs).digests
    assert [d.tenant for d in single] == ["acme", "globex"] and single[0].cases == 2
    assert on_cluster == single
    for t in ("acme", "globex"):
        found = ontology_rebuild.tenant_keys(rc, keys.OntologyKeys(), t)
        assert len(found) > 5 and len({rc.keyslot(k) for k in found}) == 1

    out = cdc(cs, "ontology", "digest", "--json")
    assert out.returncode == 0, out.stderr
    assert [orjson.loads(x)["sha256"] for x in out.stdout.splitlines()] == [
        d.sha256 for d in single]
    check = cdc(cs, "ontology", "rebuild", "--check")
    assert check.returncode == 0 and "2 of 2 tenant(s) match" in check.stdout, check.stdout

    # The live path: the relay on the cluster, `cdc ontology consume` keeps the cache.
    rc.flushall(target_nodes=RedisCluster.PRIMARIES)
    assert cdc(cs, "run", "--once").returncode == 0
    consumed = cdc(cs, "ontology", "consume", "--count", "7", "--timeout", "20")
    assert consumed.returncode == 0 and "handled=7" in consumed.stderr, consumed.stderr
    assert [ontology_rebuild.digest(rc, t) for t in ("acme", "globex")] == single
