"""Past one Redis (issue [4/5], the relay's side): marks in the stream's hash slot (format 2,
migrated from format 1), the relay on a real Redis Cluster, and WAIT for replicas before a
batch counts as acknowledged. Real redis-server processes on loopback ports.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psycopg
import pytest
import redis
from pydantic import SecretStr
from redis.cluster import RedisCluster

from cdc.pipeline.sink import RedisSink
from cdc.settings import Settings
from cdc.streams import keys
from cdc.streams.redisconn import is_cluster
from devkit.localservers import LocalRedis, LocalRedisCluster
from tests.chaosutil import assert_published_rows_have_entries
from tests.relayutil import (
    cdc,
    insert_aggregates,
    insert_cases,
    relay,
    slot_lag,
    stream_events,
    wait_for,
)

STREAMS = ("axiom:core:events", "axiom:watches", "axiom:workers")


def _entry(key: str, event_id: str) -> list[str]:
    return [key, event_id, "CASE_CREATED", "case", "a1", "t1", "{}", "", "now", "0/1"]


def test_mark_shares_the_stream_slot() -> None:
    from redis.crc import key_slot

    for stream in (*STREAMS, keys.DLQ, "{tenant-a}:events"):
        assert key_slot(keys.hwm(stream).encode()) == key_slot(stream.encode())
    assert keys.hwm("axiom:core:events") == "axiom:cdc:hwm:{axiom:core:events}"
    assert keys.hwm("{tenant-a}:events") == "axiom:cdc:hwm:{tenant-a}:events"


def test_format_1_marks_migrate_without_duplicating_or_skipping(
    redis_url: str, rds: redis.Redis
) -> None:
    """Marks written by the old format: a replay adds nothing twice, new events land."""
    stream = "axiom:core:events"
    rds.set(keys.hwm_v1(stream), "k5")  # what the format-1 relay left after k1..k5
    for i in range(1, 6):
        rds.xadd(stream, {"event_id": f"e{i}"})
    sink = RedisSink(redis_url)
    sink.connect()
    try:
        assert sink.migrate_marks([stream]) == 1
        assert sink.migrate_marks([stream]) == 0  # idempotent
        replies = sink.send({stream: [_entry(f"k{i}", f"e{i}") for i in range(3, 8)]}, {})
        assert sink.read_replies(replies) == 2  # k3..k5 again: deduplicated; k6, k7 new
    finally:
        sink.close()
    assert [e["event_id"] for e in stream_events(rds)] == [f"e{i}" for i in range(1, 8)]
    assert rds.get(keys.hwm_v1(stream)) is None and rds.get(keys.hwm(stream)) == "k7"
    assert rds.get(keys.FORMAT) == keys.FORMAT_VERSION


def test_relay_started_on_format_1_marks_publishes_each_event_once(
    settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    assert cdc(settings, "slot", "create").returncode == 0
    insert_cases(pg_dsn, 300, tag="a")
    assert cdc(settings, "run", "--once").returncode == 0
    for stream in (*STREAMS, keys.DLQ):  # turn the marks into what the old relay wrote
        if rds.exists(keys.hwm(stream)):
            rds.rename(keys.hwm(stream), keys.hwm_v1(stream))
    insert_cases(pg_dsn, 200, tag="b")
    assert cdc(settings, "run", "--once").returncode == 0
    ids = [e["event_id"] for e in stream_events(rds)]
    assert len(ids) == len(set(ids)) == 500
    assert rds.get(keys.hwm_v1("axiom:core:events")) is None


def test_relay_on_a_redis_cluster_routes_dedups_and_dead_letters(
    cluster: LocalRedisCluster, settings: Settings, pg_dsn: str, tmp_path: Path
) -> None:
    assert is_cluster(cluster.url)
    rc = RedisCluster.from_url(cluster.url, decode_responses=True)
    for key in rc.scan_iter("axiom:*"):
        rc.delete(key)
    owners = {rc.get_node_from_key(s).name for s in STREAMS}
    assert len(owners) >= 2, "the streams all hash to one master: the test proves nothing"
    s = settings.model_copy(update={"redis_url": SecretStr(cluster.url)})
    assert cdc(s, "slot", "create").returncode == 0
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
            " payload) SELECT 't1', 'x', 'a' || g, CASE g % 3 WHEN 0 THEN 'CASE_CREATED'"
            " WHEN 1 THEN 'WATCH_ALERT_TRIGGERED' ELSE 'WORKER_TASK_COMPLETED' END,"
            " jsonb_build_object('case_id', 'c', 'status', 'OPEN', 'watch_id', 'w',"
            " 'alert_id', 'a', 'severity', 'LOW', 'task_id', 't', 'worker_id', 'w', 'seq', g)"
            " FROM generate_series(1, 3000) g")
        conn.execute(  # one breaking its contract
            "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
            " payload) VALUES ('t1', 'case', 'a', 'CASE_CREATED', '{\"status\": \"x\"}')")
    res = cdc(s, "run", "--once", timeout=120)
    assert res.returncode == 0, res.stderr
    assert [rc.xlen(st) for st in STREAMS] == [1000, 1000, 1000]
    assert rc.xlen(keys.DLQ) == 1
    for st in STREAMS:
        groups = {g["name"] for g in rc.xinfo_groups(st)}
        assert groups == {"synapse_group", "watch_cep_group"}
        assert rc.get(keys.hwm(st))  # the mark sits beside its stream
    # A replay of everything (the slot re-read from the start) adds nothing.
    sink = RedisSink(cluster.url)
    sink.connect()
    try:
        batch = {st: [_entry("0" * 14 + ":0:0", "dup")] for st in STREAMS}
        assert sink.read_replies(sink.send(batch, {})) == 0
    finally:
        sink.close()
    assert_published_rows_have_entries(pg_dsn, _ClusterReader(rc))  # type: ignore[arg-type]
    rc.close()


class _ClusterReader:
    """The few calls the invariant check makes, answered by a cluster client."""

    def __init__(self, rc: RedisCluster) -> None:
        self._rc = rc

    def xrange(self, stream: str, min: str = "-", count: int = 10000) -> object:
        return self._rc.xrange(stream, min=min, count=count)


def _published(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM event_outbox WHERE status = 'PUBLISHED'")
        return int(row.fetchone()[0])  # type: ignore[index]


def test_wait_for_a_replica_holds_the_confirmation_until_it_answers(
    settings: Settings, pg_dsn: str, tmp_path: Path
) -> None:
    with LocalRedis(appendonly=True) as primary, LocalRedis(
        args=("--replicaof", "127.0.0.1", str(primary.port))
    ) as replica:
        client = redis.Redis.from_url(primary.url, decode_responses=True)
        wait_for(lambda: client.info("replication")["connected_slaves"] == 1, what="a replica")
        s = settings.model_copy(update={"redis_url": SecretStr(primary.url)})
        assert cdc(s, "slot", "create").returncode == 0
        log = tmp_path / "relay.log"
        assert replica.proc is not None
        with relay(s, str(log), CDC_REDIS_MIN_REPLICAS="1", CDC_REDIS_WAIT_TIMEOUT_MS="200"):
            insert_cases(pg_dsn, 500, tag="a")
            wait_for(lambda: _published(pg_dsn) == 500, what="500 rows acknowledged")
            os.kill(replica.proc.pid, signal.SIGSTOP)
            try:
                insert_cases(pg_dsn, 500, tag="b")
                wait_for(lambda: client.xlen("axiom:core:events") == 1000, what="b on primary")
                time.sleep(1.5)
                # On the primary, but no replica has them: not acknowledged, not marked.
                assert _published(pg_dsn) == 500
                lag_paused = slot_lag(pg_dsn, s.slot)
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
            wait_for(lambda: _published(pg_dsn) == 1000, timeout=30, what="all acknowledged")
            time.sleep(0.5)
            ids = [e["event_id"] for e in stream_events(client)]
            assert len(ids) == len(set(ids)) == 1000
        assert "replica(s) acknowledged a batch" in log.read_text()
        assert lag_paused > 0
        # The default (0): the same pause acknowledges at once what only the primary holds.
        with relay(s, str(tmp_path / "relay0.log")):
            os.kill(replica.proc.pid, signal.SIGSTOP)
            try:
                insert_cases(pg_dsn, 300, tag="c")
                wait_for(lambda: _published(pg_dsn) == 1300, timeout=30,
                         what="acknowledged without any replica")
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
        client.close()


def test_partition_function_matches_its_documented_vectors() -> None:
    from cdc.pipeline.route import partition

    text = (Path(__file__).resolve().parent.parent / "docs" / "architecture.md").read_text()
    vectors = [
        ("t1", "case-1", 8), ("t1", "case-2", 8), ("acme", "order-42", 16), ("", "", 8),
        ("tenant-ü", "agg/é", 8),
    ]
    for tenant, agg, n in vectors:
        line = f"| `{tenant}` | `{agg}` | {n} | {partition(tenant, agg, n)} |"
        assert line in text, line


def test_partitioned_route_keeps_each_aggregate_in_order_and_refuses_a_new_n(
    settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    import orjson

    routes = "WATCH_*=axiom:watches,WORKER_*=axiom:workers,*=axiom:core:events/8"
    assert cdc(settings, "slot", "create").returncode == 0
    insert_aggregates(pg_dsn)  # 2000 events of 50 aggregates, in four transactions
    res = cdc(settings, "run", "--once", CDC_ROUTES=routes)
    assert res.returncode == 0, res.stderr
    assert not rds.exists("axiom:core:events")  # N > 1: only the partitions
    seen: dict[str, str] = {}
    total = 0
    for p in range(8):
        stream = f"axiom:core:events:{p}"
        assert {g["name"] for g in rds.xinfo_groups(stream)} == {"synapse_group",
                                                                  "watch_cep_group"}
        per_agg: dict[str, list[int]] = {}
        for e in stream_events(rds, stream):
            assert seen.setdefault(e["aggregate_id"], stream) == stream  # one partition each
            per_agg.setdefault(e["aggregate_id"], []).append(orjson.loads(e["payload"])["seq"])
            total += 1
        for seqs in per_agg.values():
            assert seqs == sorted(seqs)  # commit order within the aggregate
    assert total == 2000 and len(seen) == 50
    assert len({s for s in seen.values()}) >= 6  # spread over the partitions
    changed = cdc(settings, "run", "--once",
                  CDC_ROUTES=routes.replace("/8", "/4"))
    assert changed.returncode == 2
    assert "published in 8" in changed.stderr and "DEL axiom:cdc:partitions" in changed.stderr


def _promoted(cluster: LocalRedisCluster, stream: str, port: int) -> bool:
    """Tell whether the node on `port` now owns `stream` and the cluster is ok."""
    for node in cluster.nodes:
        if node.proc is None:
            continue
        try:
            with RedisCluster(host="127.0.0.1", port=node.port, socket_timeout=1) as rc:
                info = rc.cluster_info()  # type: ignore[no-untyped-call]
                owner = rc.get_node_from_key(stream)
                return bool(info.get("cluster_state") == "ok" and int(owner.port) == port)
        except (redis.RedisError, OSError):
            continue
    return False


def _master_and_synced_replica(
    cluster: LocalRedisCluster, stream: str
) -> tuple[LocalRedis, LocalRedis] | None:
    """Return the master owning `stream` and a replica of it whose link is up, or None."""
    try:
        with RedisCluster.from_url(cluster.url) as rc:
            owner = int(rc.get_node_from_key(stream).port)
        master = next(n for n in cluster.nodes if n.port == owner)
        for node in cluster.nodes:
            if node.port != owner and node.proc is not None:
                with redis.Redis(port=node.port, socket_timeout=1) as client:
                    info = client.info("replication")
                if info.get("master_port") == owner and info.get("master_link_status") == "up":
                    return master, node
    except (redis.RedisError, OSError, StopIteration):
        pass
    return None


@pytest.mark.slow
@pytest.mark.chaos
@pytest.mark.parametrize("min_replicas", [1, 0])
def test_cluster_master_killed_mid_run(
    min_replicas: int, settings: Settings, pg_dsn: str, tmp_path: Path
) -> None:
    """SIGKILL of the master of axiom:core:events after its replica fell behind.

    With CDC_REDIS_MIN_REPLICAS=1 nothing the replica had not received was acknowledged:
    after the failover the relay re-publishes it, lost 0, duplicated 0, commit order. With
    0 the relay acknowledges (marks, confirms) what only the master holds while the replica
    is paused: what a crash of that master can lose. Whether it does depends on what of the
    master's replication stream the kernel still delivers after the SIGKILL (a CI run lost
    2,000 of 3,000 such events, other runs none), so the test bounds the loss by that window.
    """
    from tests.chaosutil import Producer

    stream = "axiom:core:events"
    with LocalRedisCluster(masters=3, replicas=1, node_timeout_ms=1000) as c:
        # On a loaded machine a 1 s node timeout can fail a master over right after start
        # (a CI run found no replica of the owner it had just read): wait for a settled pair.
        deadline = time.monotonic() + 30
        while (pair := _master_and_synced_replica(c, stream)) is None:
            assert time.monotonic() < deadline, f"no synced replica of {stream}'s master"
            time.sleep(0.1)
        master, replica = pair
        assert replica.proc is not None
        s = settings.model_copy(update={"redis_url": SecretStr(c.url)})
        assert cdc(s, "slot", "create").returncode == 0
        producer = Producer(pg_dsn, 20_000, per_tx=200, pause=0.06, lean=True)  # ~8 s
        log = tmp_path / "relay.log"
        with relay(s, str(log), CDC_REDIS_MIN_REPLICAS=str(min_replicas),
                   CDC_REDIS_WAIT_TIMEOUT_MS="300") as proc:
            thread = producer.start()
            wait_for(lambda: producer.done > 4000, what="a run in progress")
            at_stop = _published(pg_dsn)
            os.kill(replica.proc.pid, signal.SIGSTOP)  # the replica falls behind...
            time.sleep(0.3)  # (batches acknowledged before the stop get their marks)
            before = _published(pg_dsn)
            time.sleep(1.0)
            master.kill()  # ...and its master dies
            time.sleep(0.3)  # the marks of what it acknowledged before it died land
            published = _published(pg_dsn)
            acked_unreplicated = published - before
            window = published - at_stop  # all a crash could take, and more
            os.kill(replica.proc.pid, signal.SIGCONT)
            wait_for(lambda: _promoted(c, stream, replica.port), timeout=30,
                     what="the replica promoted")
            produced_at_failover = producer.done
            master.start()  # the failed node comes back: a replica of the promoted one
            thread.join(120)
            assert producer.error is None and producer.done == 20_000
            with psycopg.connect(pg_dsn) as conn:
                want = [r[0] for r in conn.execute(
                    "SELECT id::text FROM event_outbox ORDER BY (payload->>'seq')::bigint")]
            with RedisCluster(host="127.0.0.1", port=replica.port,
                              decode_responses=True) as rc:
                reader = _ClusterReader(rc)
                if min_replicas:
                    wait_for(lambda: rc.xlen(stream) >= len(want), timeout=60,
                             what="every event on the promoted master")
                    wait_for(lambda: _published(pg_dsn) == len(want), timeout=30,
                             what="every row acknowledged")
                else:
                    wait_for(lambda: _published(pg_dsn) == len(want), timeout=60,
                             what="every row acknowledged")
                time.sleep(0.5)
                got = [e["event_id"] for e in stream_events(reader)]  # type: ignore[arg-type]
            assert proc.poll() is None
        lost, dup = len(set(want) - set(got)), len(got) - len(set(got))
        print(f"\nCHAOS cluster-master-kill min_replicas={min_replicas}: events={len(want)}"
              f" entries={len(got)} lost={lost} duplicated={dup}")
        assert dup == 0
        assert produced_at_failover < 20_000, "the failover came after the producer finished"
        print(f"  acknowledged while no replica could receive: {acked_unreplicated}"
              f" (since the replica stopped: {window})")
        if min_replicas:
            assert lost == 0 and got == want  # every event once, in commit order
            assert acked_unreplicated == 0
            assert "replica(s) acknowledged a batch" in log.read_text()
        else:
            assert acked_unreplicated > 0  # what a crash of that master could have taken
            assert lost <= window, (lost, window)  # and nothing outside that window
            kept = set(got)
            assert got == [e for e in want if e in kept]  # what is left is in commit order
