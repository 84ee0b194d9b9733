"""The test harness itself: real servers on their own ports."""

from __future__ import annotations

from typing import Any

import psycopg
import redis

from devkit.localservers import LocalRedis


def test_wal_level_is_logical(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SHOW wal_level").fetchone() == ("logical",)


def test_wal2json_slot_create_and_drop(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot('harness_slot', 'wal2json')")
        conn.execute("CREATE TABLE t (x int)")
        conn.execute("INSERT INTO t VALUES (42)")
        changes = conn.execute(
            "SELECT data FROM pg_logical_slot_get_changes('harness_slot', NULL, NULL,"
            " 'format-version', '2')"
        ).fetchall()
        assert any('"action":"I"' in str(row[0]) and "42" in str(row[0]) for row in changes)
        conn.execute("SELECT pg_drop_replication_slot('harness_slot')")
        left = conn.execute(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'harness_slot'"
        ).fetchone()
        assert left == (0,)


def test_redis_ping(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.ping() is True
    assert client.connection_pool.connection_kwargs["port"] != 6379
    client.close()


def test_postgres_restart_keeps_data_and_port(pg_server: Any, pg_dsn: str) -> None:
    port = pg_server.port
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE keep (x int)")
        conn.execute("INSERT INTO keep VALUES (7)")
    pg_server.restart()
    assert pg_server.port == port
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SELECT x FROM keep").fetchone() == (7,)


def test_redis_restart_with_aof_keeps_data() -> None:
    with LocalRedis(appendonly=True) as server:
        port = server.port
        client = redis.Redis(port=port)
        client.set("k", "v")
        client.close()
        server.restart()
        assert server.port == port
        client = redis.Redis(port=port)
        assert client.get("k") == b"v"
        client.close()
