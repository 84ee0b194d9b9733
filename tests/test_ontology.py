"""Synapse's ontology cache: fed by the relay, idempotent in any order, rebuilt from the outbox."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis

from cdc.consumers.worker import Consumer
from cdc.domain import ontology, ontology_rebuild, outbox
from cdc.errors import EventError
from cdc.pipeline.contracts import Registry
from cdc.settings import Settings
from cdc.streams import keys
from devkit.localservers import LocalRedis
from tests.relayutil import cdc

STRICT = Registry(unknown="dead_letter")


def new_case(conn: psycopg.Connection[Any], tenant: str, status: str = "OPEN") -> str:
    row = conn.execute("INSERT INTO core.core_case (tenant_id, status) VALUES (%s, %s)"
                       " RETURNING id::text", (tenant, status)).fetchone()
    assert row is not None
    return str(row[0])


def assign(conn: psycopg.Connection[Any], tenant: str, case_id: str, role_id: str,
           name: str, assignee: str | None = None) -> None:
    outbox.emit(conn, outbox.Event(
        tenant_id=tenant, aggregate_type="case", aggregate_id=case_id,
        event_type="CASE_ROLE_ASSIGNED",
        payload={"case_id": case_id, "role_id": role_id, "role_name": name,
                 "assignee_id": assignee},
    ), registry=STRICT)


def consume_all(settings: Settings, cache: ontology.OntologyCache, n: int) -> None:
    consumer = Consumer(redis_url=settings.redis_url.get_secret_value(), group="onto_test",
                        streams=[keys.CORE_EVENTS], handler=cache.handle, start_id="0",
                        block_ms=200)
    try:
        stats = consumer.run(limit=n, timeout=20)
    finally:
        consumer.close()
    assert stats.acked == n and stats.failed == 0


@pytest.fixture
def workload(settings: Settings) -> Iterator[dict[str, Any]]:
    """Cases of two tenants, status changes and role assignments, committed to the outbox."""
    dsn = settings.database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        a1, a2 = new_case(conn, "acme"), new_case(conn, "acme", "IN_PROGRESS")
        g1 = new_case(conn, "globex")
        with conn.transaction():  # created, moved and assigned in one transaction
            a3 = new_case(conn, "acme")
            conn.execute("UPDATE core.core_case SET status = 'IN_PROGRESS' WHERE id = %s", (a3,))
            assign(conn, "acme", a3, "approver", "Approver", "u7")
        conn.execute("UPDATE core.core_case SET status = 'CLOSED' WHERE id = %s", (a2,))
        assign(conn, "acme", a1, "approver", "Approver", "u1")
        assign(conn, "acme", a1, "reviewer", "Reviewer")
        assign(conn, "globex", g1, "owner", "Owner", "u9")
    yield {"acme": (a1, a2, a3), "globex": (g1,), "events": 10}


def test_relay_to_cache_then_flush_and_rebuild_gives_the_same_digest(
    settings: Settings, workload: dict[str, Any], rds: redis.Redis
) -> None:
    assert cdc(settings, "run", "--once").returncode == 0
    cache = ontology.OntologyCache(rds)
    consume_all(settings, cache, workload["events"])
    a1, a2, a3 = workload["acme"]
    assert cache.case("acme", a1).keys() == {"case_id", "status", "v"}
    assert cache.case("acme", a1)["status"] == "OPEN"
    assert cache.case("acme", a2)["status"] == "CLOSED"
    assert cache.case("acme", a3)["status"] == "IN_PROGRESS"  # not undone by its creation
    assert cache.roles_of("acme", a1) == {"approver": {"name": "Approver", "assignee_id": "u1"},
                                          "reviewer": {"name": "Reviewer", "assignee_id": ""}}
    assert cache.cases_with_role("acme", "approver") == sorted([a1, a3])
    assert cache.case("globex", a1) == {}  # tenants do not mix
    live = [ontology_rebuild.digest(rds, t) for t in ("acme", "globex")]
    assert [(d.cases, d.roles, d.edges) for d in live] == [(3, 2, 3), (1, 1, 1)]

    rds.flushall()  # Redis lost everything
    assert ontology_rebuild.digest(rds, "acme").cases == 0
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        done = ontology_rebuild.rebuild(conn, rds, settings)
    assert done.rows == workload["events"] and done.digests == live

    # and again over a live cache (a rebuild drops first), one tenant only
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        again = ontology_rebuild.rebuild(conn, rds, settings, tenant="globex")
    assert again.dropped > 0 and again.digests == live[1:]
    assert [ontology_rebuild.digest(rds, t) for t in ("acme", "globex")] == live


def test_any_order_and_any_redelivery_leave_the_same_cache(rds: redis.Redis) -> None:
    events = [
        ("CASE_CREATED", {"case_id": "c1", "status": "OPEN", "at": 10}),
        ("CASE_STATUS_CHANGED", {"case_id": "c1", "from_status": "OPEN",
                                 "to_status": "IN_PROGRESS", "at": 20}),
        ("CASE_STATUS_CHANGED", {"case_id": "c1", "from_status": "IN_PROGRESS",
                                 "to_status": "OPEN", "at": 30}),  # back to OPEN
        ("CASE_ROLE_ASSIGNED", {"case_id": "c1", "role_id": "r1", "role_name": "Owner",
                                "assignee_id": "u1", "at": 15}),
        ("CASE_ROLE_ASSIGNED", {"case_id": "c1", "role_id": "r1", "role_name": "Owner",
                                "assignee_id": "u2", "at": 25}),  # reassigned
    ]
    digests = set()
    rng = random.Random(7)
    orders = list(itertools.permutations(events))
    for n, order in enumerate(rng.sample(orders, 40)):
        ns = f"test:onto:{n}"
        cache = ontology.OntologyCache(rds, ns=ns)
        redelivered = list(order) + rng.sample(list(order), 3)  # some events twice
        for event_type, payload in redelivered:
            cache.apply("acme", event_type, payload, "")
        assert cache.case("acme", "c1")["status"] == "OPEN"
        assert cache.roles_of("acme", "c1") == {"r1": {"name": "Owner", "assignee_id": "u2"}}
        digests.add(ontology_rebuild.digest(rds, "acme", ns=ns).sha256)
    assert len(digests) == 1


def test_a_later_commit_wins_even_when_its_transaction_started_first(
    settings: Settings, rds: redis.Redis
) -> None:
    dsn = settings.database_url.get_secret_value()
    with psycopg.connect(dsn, autocommit=True) as conn:
        case_id = new_case(conn, "acme")
    with psycopg.connect(dsn) as early, psycopg.connect(dsn) as late:
        early.execute("SELECT now()")  # its created_at is taken here...
        late.execute("UPDATE core.core_case SET status = 'ON_HOLD' WHERE id = %s", (case_id,))
        late.commit()
        early.execute("UPDATE core.core_case SET status = 'CLOSED' WHERE id = %s", (case_id,))
        early.commit()  # ...but its change comes last
    with psycopg.connect(dsn, autocommit=True) as conn:
        created = conn.execute(
            "SELECT payload->>'to_status' FROM public.event_outbox"
            " WHERE event_type = 'CASE_STATUS_CHANGED' ORDER BY created_at").fetchall()
        assert created == [("CLOSED",), ("ON_HOLD",)]  # created_at would get it wrong
        ontology_rebuild.rebuild(conn, rds, settings)
    assert ontology.OntologyCache(rds).case("acme", case_id)["status"] == "CLOSED"


def test_broken_events_are_refused_for_the_dlq(rds: redis.Redis) -> None:
    cache = ontology.OntologyCache(rds)
    for tenant, event_type, payload in (
        ("", "CASE_CREATED", {"case_id": "c1", "status": "OPEN", "at": 1}),
        ("acme", "CASE_CREATED", {"status": "OPEN", "at": 1}),
        ("acme", "CASE_ROLE_ASSIGNED", {"case_id": "c1", "role_name": "x", "at": 1}),
        ("acme", "CASE_CREATED", {"case_id": "c1", "at": 1}),
        ("acme", "CASE_CREATED", {"case_id": "c1", "status": "OPEN"}),  # no order at all
    ):
        with pytest.raises(EventError):
            cache.apply(tenant, event_type, payload, "")
    cache.apply("acme", "WATCH_ALERT_TRIGGERED", {}, "")
    assert cache.applied.ignored == 1 and ontology_rebuild.tenants(rds, keys.OntologyKeys()) == []


def test_the_cache_survives_a_redis_restart_with_aof() -> None:
    with LocalRedis(appendonly=True) as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        cache = ontology.OntologyCache(client)
        cache.apply("acme", "CASE_CREATED", {"case_id": "c1", "status": "OPEN", "at": 1}, "")
        cache.apply("acme", "CASE_ROLE_ASSIGNED",
                    {"case_id": "c1", "role_id": "r1", "role_name": "Owner", "at": 2}, "")
        before = ontology_rebuild.digest(client, "acme")
        client.close()
        server.restart()  # a Synapse (and Redis) restart: the AOF brings it back
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            assert ontology_rebuild.digest(client, "acme") == before and before.cases == 1
        finally:
            client.close()


def test_cli_digest_and_rebuild_check(
    settings: Settings, workload: dict[str, Any], rds: redis.Redis
) -> None:
    with psycopg.connect(settings.database_url.get_secret_value(), autocommit=True) as conn:
        ontology_rebuild.rebuild(conn, rds, settings)
    proc = cdc(settings, "ontology", "digest")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == ["acme", "globex"]
    assert lines[0].endswith("cases=3 roles=2 edges=3")
    proc = cdc(settings, "ontology", "rebuild", "--check")
    assert proc.returncode == 0 and "2 of 2 tenant(s) match" in proc.stdout, proc.stdout
    assert not [k for k in rds.scan_iter("axiom:onto:check:*")]  # the scratch copy is gone

    rds.hset(keys.OntologyKeys().case("acme", workload["acme"][0]), "status", "CLOSED")
    proc = cdc(settings, "ontology", "rebuild", "--check")
    assert proc.returncode == 1 and "DIFFERS acme" in proc.stdout and "globex" not in proc.stdout
    proc = cdc(settings, "ontology", "rebuild", "--tenant", "acme")
    assert proc.returncode == 0, proc.stderr
    assert cdc(settings, "ontology", "rebuild", "--check").returncode == 0


def test_cli_consume_keeps_the_cache(
    settings: Settings, workload: dict[str, Any], rds: redis.Redis
) -> None:
    assert cdc(settings, "run", "--once").returncode == 0
    proc = cdc(settings, "ontology", "consume", "--count", str(workload["events"]),
               "--timeout", "20")
    assert proc.returncode == 0 and "handled=10" in proc.stderr, proc.stderr
    live = [ontology_rebuild.digest(rds, t) for t in ("acme", "globex")]
    assert [d.cases for d in live] == [3, 1]
    assert cdc(settings, "ontology", "rebuild", "--check").returncode == 0


def test_apply_survives_a_script_flush(rds: redis.Redis) -> None:
    """The pipelined EVALSHA answers NOSCRIPT after a flush: loaded, run again, counted once."""
    cache = ontology.OntologyCache(rds)
    cache.apply("acme", "CASE_CREATED", {"case_id": "c1", "status": "OPEN", "at": 1}, "")
    rds.script_flush()
    cache.apply("acme", "CASE_ROLE_ASSIGNED",
                {"case_id": "c1", "role_id": "r1", "role_name": "Owner", "at": 2}, "")
    assert (cache.applied.written, cache.applied.stale) == (3, 0)
    assert cache.roles_of("acme", "c1") == {"r1": {"name": "Owner", "assignee_id": ""}}
