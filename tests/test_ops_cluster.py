"""The operator tools on a real Redis Cluster (six redis-server processes, started once here):
`cdc dlq`, `cdc replay`, `cdc trim`, `cdc status`, `cdc doctor` and query jobs, beside the
relay's core cases. Also: replay sets of the format before are still honoured.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import redis
from pydantic import SecretStr
from redis.cluster import RedisCluster

from cdc.domain.queryjobs import QueryJob, QueryJobStore
from cdc.observe.metrics import Metrics
from cdc.observe.sampler import Sampler
from cdc.ops.trim import Trimmer
from cdc.settings import Settings
from cdc.streams import keys, redisconn
from devkit.localservers import LocalRedisCluster
from tests.chaosutil import assert_published_rows_have_entries
from tests.opsutil import Cli
from tests.relayutil import STREAMS, cdc, stream_events

BAD = '{"case_id": "c9", "idempotency_key": "k9"}'  # CASE_CREATED without its status
_MIXED = (
    "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload,"
    " created_at) SELECT 't1', 'x', 'a' || g, CASE g % 3 WHEN 0 THEN 'CASE_CREATED'"
    " WHEN 1 THEN 'WATCH_ALERT_TRIGGERED' ELSE 'WORKER_TASK_COMPLETED' END,"
    " jsonb_build_object('case_id', 'c', 'status', 'OPEN', 'watch_id', 'w', 'alert_id', 'a',"
    " 'severity', 'LOW', 'task_id', 't', 'worker_id', 'w', 'seq', g),"
    " now() - interval '2 hours' + g * interval '1 ms' FROM generate_series(1, 300) g"
)


@pytest.fixture
def ccli(cs: Settings, cli: Cli) -> Cli:
    cli.settings = cs
    return cli


def _insert_mixed_and_one_bad(dsn: str) -> str:
    """Insert the 300 mixed rows and one CASE_CREATED without its status; return its id."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_MIXED)
        return str(conn.execute(
            "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
            " payload) VALUES ('t1', 'case', 'c9', 'CASE_CREATED', %s) RETURNING id::text",
            (BAD,),
        ).fetchone()[0])  # type: ignore[index]


def _events(rc: RedisCluster, stream: str) -> list[dict[str, str]]:
    return stream_events(rc, stream)  # type: ignore[arg-type]


def test_open_client_picks_the_cluster_client(cluster: LocalRedisCluster, redis_url: str) -> None:
    assert redisconn.is_cluster(cluster.url) and not redisconn.is_cluster(redis_url)
    with redisconn.connect(cluster.url) as c:
        assert isinstance(c, RedisCluster)
    with redisconn.connect(redis_url) as c:
        assert isinstance(c, redis.Redis)
    with pytest.raises(redisconn.ConfigError, match="not a Redis Cluster"):
        redisconn.connect_single(cluster.url)


def test_relay_and_every_tool_on_a_cluster(
    cs: Settings, ccli: Cli, pg_dsn: str, rc: RedisCluster
) -> None:
    """Route, dead-letter, `cdc dlq replay` once, `cdc replay` once, trim, status."""
    owners = {rc.get_node_from_key(s).name for s in STREAMS}
    assert len(owners) >= 2, "the streams all hash to one master: the test proves nothing"
    assert rc.keyslot(keys.dlq_replayed(STREAMS[0])) == rc.keyslot(STREAMS[0])
    assert rc.keyslot(keys.replay_run("r", STREAMS[0])) == rc.keyslot(STREAMS[0])
    # The DLQ stream and the old set live elsewhere: one script could not touch them all.
    assert rc.keyslot(keys.DLQ) != rc.keyslot(STREAMS[0]) != rc.keyslot(keys.DLQ_REPLAYED)
    assert cdc(cs, "slot", "create").returncode == 0
    bad_id = _insert_mixed_and_one_bad(pg_dsn)
    res = cdc(cs, "run", "--once")
    assert res.returncode == 0, res.stderr
    assert [rc.xlen(s) for s in STREAMS] == [100, 100, 100] and rc.xlen(keys.DLQ) == 1
    for s in STREAMS:
        assert {g["name"] for g in rc.xinfo_groups(s)} == {"synapse_group", "watch_cep_group"}
    assert_published_rows_have_entries(pg_dsn, rc)  # type: ignore[arg-type]

    # cdc dlq: still invalid, then repaired and replayed once; its DLQ copy leaves.
    assert ccli("dlq", "replay", "--all").code == 1
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE event_dead_letter SET payload = payload || '{\"status\": \"OPEN\"}'")
    done = ccli("dlq", "replay", "--all", "--json")
    assert done.code == 0 and done.json()["replayed"] == [bad_id], done.out + done.err
    assert ccli("dlq", "replay", bad_id, "--json").json()["already"] == [bad_id]
    landed = [e for e in _events(rc, STREAMS[0]) if e["event_id"] == bad_id]
    assert len(landed) == 1 and landed[0]["replay"] == "dlq"
    assert rc.xlen(keys.DLQ) == 0 and rc.sismember(keys.dlq_replayed(STREAMS[0]), bad_id)
    assert ccli("dlq", "list", "--json").json() == []

    # cdc replay: the 300 mixed rows again, each once, across the masters; a rerun adds 0.
    since = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    until = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    run = ccli("replay", "--since", since, "--until", until, "--json")
    assert run.code == 0 and run.json()["added"] == 300, run.out + run.err
    again = ccli("replay", "--since", since, "--until", until, "--id", run.json()["replay_id"],
                 "--json")
    assert again.json()["added"] == 0 and again.json()["already"] == 300
    rid = run.json()["replay_id"]
    for s in STREAMS:
        tagged = [e["event_id"] for e in _events(rc, s) if e.get("replay") == rid]
        assert len(tagged) == len(set(tagged)) == 100


    # cdc trim: below what both groups acked, on the stream's own master.
    stream = STREAMS[1]
    for g in ("synapse_group", "watch_cep_group"):
        rc.xgroup_setid(stream, g, "0")
        got: Any = rc.xreadgroup(g, "c1", {stream: ">"}, count=150)
        rc.xack(stream, g, *[eid for eid, _ in got[0][1]][: 120 if g == "synapse_group" else 150])
    trimmed = ccli("trim", "--stream", stream, "--cap", "0", "--json")
    assert trimmed.code == 0 and trimmed.json()["removed"] == 120, trimmed.out + trimmed.err
    assert trimmed.json()["holder"] == "synapse_group" and rc.xlen(stream) == 80

    # cdc status: every stream, its groups and the DLQ, read from their masters.
    status = ccli("status", "--json")
    snap = status.json()
    by_name = {s["name"]: s for s in snap["streams"]}
    assert {n: s["length"] for n, s in by_name.items()} == dict(
        zip(STREAMS, [201, 80, 200], strict=True)
    )
    groups = {g["name"]: g["pending"] for g in by_name[stream]["groups"]}
    assert groups == {"synapse_group": 30, "watch_cep_group": 0}
    assert snap["dlq_length"] == 0
    assert not [p for p in snap["problems"] if p.startswith("Redis")], snap["problems"]

    # cdc dlq purge: the row, and its id from the stream's set on that stream's master.
    purged = ccli("dlq", "purge", "--yes", "--replayed")
    assert purged.code == 0 and "purged 1 dead letter(s)" in purged.out, purged.out + purged.err
    assert not rc.sismember(keys.dlq_replayed(STREAMS[0]), bad_id)


def test_doctor_checks_every_master(ccli: Cli, rc: RedisCluster) -> None:
    masters = [n.name for n in rc.get_primaries()]
    assert len(masters) == 3
    found = {f["check"]: f for f in ccli("doctor", "--json").json()}
    assert found["cluster_state"]["level"] == "ok"
    assert found["cluster_replicas"]["level"] == "ok"
    assert found["min_replicas_to_write"]["level"] == "warn"
    assert "min-replicas-to-write 1" in found["min_replicas_to_write"]["fix"]
    assert found["redis_min_replicas"]["level"] == "warn"
    for m in masters:
        assert found[f"redis_aof@{m}"]["level"] == "ok"
    victim = rc.get_primaries()[1]
    node = victim.redis_connection
    assert node is not None
    node.config_set("appendonly", "no")
    for n in rc.get_primaries():
        assert n.redis_connection is not None
        n.redis_connection.config_set("min-replicas-to-write", 1)
    try:
        out = ccli("doctor", CDC_REDIS_MIN_REPLICAS="1")
        found = {f["check"]: f for f in ccli("doctor", "--json",
                                              CDC_REDIS_MIN_REPLICAS="1").json()}
    finally:
        node.config_set("appendonly", "yes")
        for n in rc.get_primaries():
            assert n.redis_connection is not None
            n.redis_connection.config_set("min-replicas-to-write", 0)
    assert found[f"redis_aof@{victim.name}"]["level"] == "FAIL"
    assert out.code == 1 and f"{victim.name}: AOF is off" in out.out
    assert found["min_replicas_to_write"]["level"] == "ok" and "redis_min_replicas" not in found


def test_doctor_names_a_master_without_replica_and_a_failed_cluster(ccli: Cli) -> None:
    with LocalRedisCluster(masters=3, replicas=0, node_timeout_ms=1000) as bare:
        ccli.settings = ccli.settings.model_copy(update={"redis_url": SecretStr(bare.url)})
        found = {f["check"]: f for f in ccli("doctor", "--json").json()}
        assert found["cluster_replicas"]["level"] == "FAIL"
        assert "--cluster-slave" in found["cluster_replicas"]["fix"]
        bare.nodes[2].kill()  # its slots have no master now
        ccli.settings = ccli.settings.model_copy(
            update={"redis_url": SecretStr(bare.nodes[0].url)}
        )
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while True:
            found = {f["check"]: f for f in ccli("doctor", "--json").json()}
            if "cluster_state" in found and found["cluster_state"]["level"] == "FAIL":
                break
            assert datetime.now(UTC) < deadline, found
        assert "--cluster fix" in found["cluster_state"]["fix"]


def test_trim_and_query_jobs_on_a_cluster(cluster: LocalRedisCluster, rc: RedisCluster) -> None:
    for s in STREAMS:
        for i in range(50):
            rc.xadd(s, {"i": str(i)})
        rc.xgroup_create(s, "g", id="0")
        got: Any = rc.xreadgroup("g", "c", {s: ">"}, count=20)
        rc.xack(s, "g", *[eid for eid, _ in got[0][1]])
    t = Trimmer(redis_url=cluster.url, streams=list(STREAMS), cap=10)
    results = t.trim_once()
    t.close()
    assert [(r.removed, r.length, r.over_cap) for r in results] == [(20, 30, True)] * 3

    with redisconn.connect(cluster.url) as client:
        store = QueryJobStore(client, ttl_s=60)
        job = store.save(QueryJob("j1", "t1", data={"q": 1}))
        assert store.get("j1") == job
        updated = store.update_status("j1", "COMPLETED", data={"rows": 3})
        assert updated.status == "COMPLETED" and updated.data == {"rows": 3}
        ttl = store.ttl_s("j1")
        assert ttl is not None and 0 < ttl <= 60
        assert store.expire("j1") and store.get("j1") is None


def test_sampler_reads_every_stream_on_its_master(cs: Settings, rc: RedisCluster) -> None:
    for n, st in enumerate(STREAMS, start=1):
        for i in range(n * 10):
            rc.xadd(st, {"i": str(i)})
        rc.xgroup_create(st, "g", id="0")
    rc.xadd(keys.DLQ, {"event_id": "x"})
    metrics = Metrics()
    Sampler(cs, metrics, threading.Event()).sample()
    get = metrics.registry.get_sample_value
    assert get("core_relay_sampler_errors_total", {"source": "redis"}) is None
    assert [get("core_stream_length", {"stream": st}) for st in STREAMS] == [10, 20, 30]
    assert get("core_dlq_depth") == 1


def test_replay_sets_of_the_format_before_are_honoured(
    settings: Settings, pg_dsn: str, cli: Cli, rds: redis.Redis
) -> None:
    """An id in `axiom:cdc:dlq:replayed` or a run's one set was republished: not again."""
    assert cdc(settings, "slot", "create").returncode == 0
    bad_id = _insert_mixed_and_one_bad(pg_dsn)
    assert cdc(settings, "run", "--once").returncode == 0
    # What the old `cdc dlq replay` left when it died before marking the row: the entry on
    # its stream (the old script also deleted the DLQ copy) and the id in the one old set.
    rds.xadd(STREAMS[0], {"event_id": bad_id, "replay": "dlq"})
    rds.sadd(keys.DLQ_REPLAYED, bad_id)
    rerun = cli("dlq", "replay", "--all", "--no-validate", "--json")
    assert rerun.code == 0 and rerun.json()["already"] == [bad_id], rerun.out
    assert len([e for e in stream_events(rds) if e["event_id"] == bad_id]) == 1
    assert rds.xlen(keys.DLQ) == 0  # the copy is dropped all the same
    assert cli("dlq", "purge", "--yes").code == 0
    assert not rds.sismember(keys.DLQ_REPLAYED, bad_id)
    # An old run that republished the first 100 rows (in its one set) is resumed.
    with psycopg.connect(pg_dsn) as conn:
        first = [str(r[0]) for r in conn.execute(
            "SELECT id FROM event_outbox WHERE id <> %s ORDER BY created_at LIMIT 100",
            (bad_id,))]
    rds.sadd(keys.replay_run_v1("rold"), *first)
    since = (datetime.now(UTC) - timedelta(hours=3)).isoformat()
    until = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    run = cli("replay", "--since", since, "--until", until, "--id", "rold", "--json")
    assert run.code == 0 and run.json()["added"] == 200 and run.json()["already"] == 100
    tagged = {e["event_id"] for s in STREAMS for e in stream_events(rds, s)
              if e.get("replay") == "rold"}
    assert len(tagged) == 200 and not tagged & set(first)
