"""`cdc doctor` against real clusters: healthy, wal_level=replica, a bare role, bad Redis."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from pydantic import SecretStr

from cdc.settings import Settings
from devkit.localservers import LocalPostgres, LocalRedis, free_port
from tests.opsutil import Cli

_roles = itertools.count(1)


@pytest.fixture(scope="module")
def aof_redis() -> Iterator[LocalRedis]:
    """A Redis with AOF on (appendfsync always), as doctor wants it."""
    with LocalRedis(appendonly=True) as server:
        yield server




def levels(findings: list[dict[str, Any]]) -> dict[str, str]:
    return {f["check"]: f["level"] for f in findings}


def test_healthy_cluster_passes_and_aof_off_fails(
    settings: Settings, cli: Cli, aof_redis: LocalRedis
) -> None:
    bad = cli("doctor")  # the session Redis runs without persistence
    assert bad.code == 1
    assert "FAIL  redis_aof" in bad.out and "CONFIG SET appendonly yes" in bad.out

    cli.settings = settings.model_copy(update={"redis_url": SecretStr(aof_redis.url)})
    good = cli("doctor")
    assert good.code == 0, good.out
    assert "wal2json loads" in good.out and "doctor: ready" in good.out
    as_json = cli("doctor", "--json")
    found = levels(as_json.json())
    assert as_json.code == 0 and "FAIL" not in found.values()
    assert found["wal_level"] == found["wal2json"] == found["migrations"] == "ok"
    assert found["max_slot_wal_keep_size"] == "warn"  # the test cluster keeps WAL unlimited


def test_wal_level_replica_exits_1_and_names_the_fix(aof_redis: LocalRedis, cli: Cli) -> None:
    with LocalPostgres(wal_level="replica", extra_conf="output_plugin_libraries = ''") as pg:
        cli.settings = cli.settings.model_copy(update={
            "database_url": SecretStr(pg.dsn), "redis_url": SecretStr(aof_redis.url),
        })
        res = cli("doctor")
        assert res.code == 1
        assert "wal_level is replica" in res.out
        assert "fix: ALTER SYSTEM SET wal_level = logical; then restart PostgreSQL" in res.out
        assert "ALTER SYSTEM SET output_plugin_libraries = wal2json;" in res.out
        assert "fix: cdc migrate" in res.out  # a bare cluster has no migrations
        found = levels(cli("doctor", "--json").json())
        assert found["wal_level"] == found["output_plugin_libraries"] == "FAIL"
        assert "wal2json" not in found  # no probe without logical decoding


def test_bare_role_gets_replication_and_grant_fixes(
    pg_dsn: str, aof_redis: LocalRedis, cli: Cli
) -> None:
    role = f"relay_{next(_roles)}_{free_port()}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    dsn = pg_dsn.replace("postgres@", f"{role}@")
    cli.settings = cli.settings.model_copy(update={
        "database_url": SecretStr(dsn), "redis_url": SecretStr(aof_redis.url),
    })
    res = cli("doctor")
    assert res.code == 1
    assert f'ALTER ROLE "{role}" WITH REPLICATION;' in res.out
    # One statement gives every privilege the relay uses (sequences included): the group
    # role of migration 006. Before it, doctor listed four tables and missed the sequence.
    assert f'fix: GRANT cdc_relay TO "{role}";' in res.out
    assert "event_dead_letter_id_seq" in res.out  # named among what is missing
    fixes = [
        f["fix"] for f in cli("doctor", "--json").json()
        if f["check"] in ("role", "grants", "migrations")
    ]
    assert len(fixes) >= 2  # REPLICATION, the group role (the migration record is in it)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # apply exactly what doctor said
        for fix in fixes:
            conn.execute(fix)
    after = levels(cli("doctor", "--json").json())
    assert after["role"] == after["grants"] == after["migrations"] == after["wal2json"] == "ok"


def test_redis_unreachable_or_evicting_fails(aof_redis: LocalRedis, cli: Cli) -> None:
    cli.settings = cli.settings.model_copy(
        update={"redis_url": SecretStr(f"redis://:hunter2@127.0.0.1:{free_port()}/0")}
    )
    down = cli("doctor")
    assert down.code == 1 and "FAIL  redis" in down.out and "cannot reach" in down.out
    assert "hunter2" not in down.out + down.err

    client = redis.Redis.from_url(aof_redis.url)
    client.config_set("maxmemory-policy", "allkeys-lru")
    try:
        cli.settings = cli.settings.model_copy(update={"redis_url": SecretStr(aof_redis.url)})
        evicting = cli("doctor")
        assert evicting.code == 1
        assert "CONFIG SET maxmemory-policy noeviction" in evicting.out
    finally:
        client.config_set("maxmemory-policy", "noeviction")
        client.close()
