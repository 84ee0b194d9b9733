"""Synapse and Weaver stores against the harness PostgreSQL: durable, encrypted, bounded."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import orjson
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from cdc.domain.stores.base import Pool
from cdc.domain.stores.crypto import Cipher, generate_key
from cdc.domain.stores.datasources import DataSourceStore, rotate_key
from cdc.domain.stores.glossary import GlossaryStore
from cdc.domain.stores.mining import MiningStore
from cdc.errors import ConfigError, DecryptError, StoreError

CONFIG = {"host": "db.internal.example", "port": 5432, "user": "weaver_reader",
          "password": "s3cret-Passw0rd!", "database": "warehouse"}


def open_pool(dsn: str, size: int = 4) -> Pool:
    return ConnectionPool(dsn, min_size=1, max_size=size, open=True, timeout=20)


@pytest.fixture
def pool(pg_dsn: str) -> Iterator[Pool]:
    with open_pool(pg_dsn) as p:
        yield p


@pytest.fixture
def key() -> str:
    return generate_key()


def raw_config(dsn: str, ds_id: object) -> bytes:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT connection_config FROM weaver.datasource WHERE id = %s", (ds_id,)
        ).fetchone()
    assert row is not None
    return bytes(row[0])


def outbox_rows(dsn: str) -> list[tuple[str, dict[str, object]]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT event_type, payload FROM public.event_outbox ORDER BY created_at"
        )
        return [(t, p) for t, p in rows.fetchall()]


def test_restart_keeps_state(pg_dsn: str, key: str) -> None:
    cipher = Cipher.from_secret(key)
    with open_pool(pg_dsn) as first:
        mining = MiningStore(first)
        task = mining.create("t1", "discover", {"log": "orders", "threshold": 0.8})
        mining.start("t1", task.id)
        result = mining.complete("t1", task.id, result_type="model",
                                 result_data={"nodes": ["a", "b"], "edges": [["a", "b"]]})
        ds = DataSourceStore(first, cipher=cipher).register("t1", "erp", "postgres", CONFIG)
        GlossaryStore(first).upsert("t1", "Lead time", definition="order to delivery",
                                    source_table="orders", source_column="lead_days")
    with open_pool(pg_dsn) as second:  # a fresh pool: nothing carried over in memory
        mining = MiningStore(second)
        again = mining.get("t1", task.id)
        assert again is not None and again.status == "COMPLETED"
        assert again.input_params == {"log": "orders", "threshold": 0.8}
        assert again.completed_at is not None
        assert mining.results("t1", task.id) == [result]
        assert [t.id for t in mining.list_tasks("t1")] == [task.id]
        fresh = DataSourceStore(second, cipher=Cipher.from_secret(key)).get("t1", ds.id)
        assert fresh == ds and fresh.connection_config == CONFIG
        entry = GlossaryStore(second).lookup("t1", "lead TIME")
        assert entry is not None and entry.definition == "order to delivery"
        assert entry.source_column == "lead_days"


def test_rolled_back_completion_leaves_no_result_and_no_event(pool: Pool, pg_dsn: str) -> None:
    mining = MiningStore(pool)
    task = mining.create("t1", "conformance")
    mining.start("t1", task.id)
    with pytest.raises(RuntimeError, match="crash"), pool.connection() as conn:
        mining.complete("t1", task.id, result_type="stats", result_data={"fitness": 0.9},
                        conn=conn)
        raise RuntimeError("crash before commit")
    after = mining.get("t1", task.id)
    assert after is not None and after.status == "RUNNING"
    assert mining.results("t1", task.id) == []
    assert outbox_rows(pg_dsn) == []


def test_complete_and_fail_emit_their_events(pool: Pool, pg_dsn: str) -> None:
    mining = MiningStore(pool)
    done = mining.create("t1", "discover")
    mining.start("t1", done.id)
    result = mining.complete("t1", done.id, result_type="model", result_data=[1, 2])
    failed = mining.fail("t1", mining.create("t1", "bottleneck").id, "log is empty")
    assert failed.status == "FAILED" and failed.error == "log is empty"
    events = outbox_rows(pg_dsn)
    assert events == [
        ("MINING_TASK_COMPLETED", {
            "task_id": str(done.id), "task_type": "discover", "result_id": str(result.id),
            "result_type": "model", "idempotency_key": f"mining_task:{done.id}:completed"}),
        ("MINING_TASK_FAILED", {
            "task_id": str(failed.id), "task_type": "bottleneck", "error": "log is empty",
            "idempotency_key": f"mining_task:{failed.id}:failed"}),
    ]


def test_illegal_transitions_and_other_tenants_are_refused(pool: Pool, pg_dsn: str) -> None:
    mining = MiningStore(pool)
    task = mining.create("t1", "discover")
    with psycopg.connect(pg_dsn, autocommit=True) as auto, pytest.raises(StoreError, match="auto"):
        mining.start("t1", task.id, conn=auto)  # the tenant lock needs a transaction
    with pytest.raises(StoreError, match="it is PENDING"):
        mining.complete("t1", task.id, result_type="model", result_data={})
    with pytest.raises(StoreError, match="not found for tenant t2"):
        mining.start("t2", task.id)
    assert mining.get("t2", task.id) is None and mining.list_tasks("t2") == []
    mining.start("t1", task.id)
    with pytest.raises(StoreError, match="it is RUNNING"):
        mining.start("t1", task.id)
    with pytest.raises(StoreError, match="not a valid id"):
        mining.get("t1", "not-a-uuid")
    assert [t.status for t in mining.list_tasks("t1", status="RUNNING")] == ["RUNNING"]


def test_sixteen_concurrent_starts_leave_exactly_eight_running(pool: Pool, pg_dsn: str) -> None:
    mining = MiningStore(pool)
    tasks = [mining.create("busy", "discover") for _ in range(16)]
    barrier = threading.Barrier(16)
    started: list[str] = []
    refused: list[str] = []

    def start(task_id: object) -> None:
        with psycopg.connect(pg_dsn) as conn:  # each thread its own connection
            barrier.wait(timeout=20)
            try:
                mining.start("busy", str(task_id), conn=conn)
                conn.commit()
                started.append(str(task_id))
            except StoreError as e:
                conn.rollback()
                refused.append(str(e))

    threads = [threading.Thread(target=start, args=(t.id,)) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(started) == 8 and len(refused) == 8
    assert all("limit 8" in msg for msg in refused)
    assert len(mining.list_tasks("busy", status="RUNNING")) == 8
    other = mining.create("quiet", "discover")  # the limit is per tenant
    assert mining.start("quiet", other.id).status == "RUNNING"


def test_connection_config_is_only_ciphertext_in_the_column(
    pool: Pool, pg_dsn: str, key: str
) -> None:
    ds = DataSourceStore(pool, cipher=Cipher.from_secret(key)).register(
        "t1", "erp", "postgres", CONFIG)
    raw = raw_config(pg_dsn, ds.id)
    plain = orjson.dumps(CONFIG, option=orjson.OPT_SORT_KEYS)
    pieces = {plain[i:i + 6] for i in range(len(plain) - 5)}
    assert not [p for p in pieces if p in raw]
    for value in ("s3cret", "db.internal", "weaver_reader", "warehouse", key[:12]):
        assert value.encode() not in raw
    assert "s3cret" not in repr(ds)
    again = DataSourceStore(pool, cipher=Cipher.from_secret(key)).register(
        "t1", "erp2", "postgres", CONFIG)
    assert raw_config(pg_dsn, again.id)[17:] != raw[17:]  # fresh nonce: no equal ciphertexts


def test_wrong_key_moved_or_altered_ciphertext_raise_decrypt_error(
    pool: Pool, pg_dsn: str, key: str
) -> None:
    store = DataSourceStore(pool, cipher=Cipher.from_secret(key))
    a = store.register("t1", "erp", "postgres", CONFIG)
    b = store.register("t1", "crm", "mysql", {"host": "crm"})
    wrong = DataSourceStore(pool, cipher=Cipher.from_secret(generate_key()))
    with pytest.raises(DecryptError, match="encrypted under key id") as info:
        wrong.get("t1", a.id)
    assert "s3cret" not in str(info.value) and key not in str(info.value)
    with psycopg.connect(pg_dsn) as conn:  # copy a's ciphertext into b's row
        conn.execute(
            "UPDATE weaver.datasource SET connection_config ="
            " (SELECT connection_config FROM weaver.datasource WHERE id = %s) WHERE id = %s",
            (a.id, b.id),
        )
    with pytest.raises(DecryptError, match="failed authentication"):
        store.get("t1", b.id)
    with psycopg.connect(pg_dsn) as conn:  # flip one ciphertext bit
        conn.execute(
            "UPDATE weaver.datasource SET connection_config ="
            " set_byte(connection_config, 30, get_byte(connection_config, 30) # 1)"
            " WHERE id = %s", (a.id,),
        )
    with pytest.raises(DecryptError, match="failed authentication"):
        store.get("t1", a.id)
    with pytest.raises(ConfigError, match="CDC_WEAVER_SECRET_KEY"):
        Cipher.from_secret("too short")
    with pytest.raises(ConfigError, match="not set"):
        Cipher.from_secret(None)


def test_rotate_key_command_reencrypts_every_row(pool: Pool, pg_dsn: str, key: str) -> None:
    old = DataSourceStore(pool, cipher=Cipher.from_secret(key))
    made = [old.register(t, n, "oracle", {**CONFIG, "n": n})
            for t, n in [("t1", "a"), ("t1", "b"), ("t2", "a")]]
    new_key = generate_key()
    proc = subprocess.run(
        [sys.executable, "-m", "cdc", "weaver", "rotate-key", "--new-key-env", "NEW_WEAVER_KEY"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "CDC_DATABASE_URL": pg_dsn, "CDC_WEAVER_SECRET_KEY": key,
             "NEW_WEAVER_KEY": new_key},
    )
    assert proc.returncode == 0, proc.stderr
    assert "re-encrypted 3 " in proc.stdout
    assert key not in proc.stdout + proc.stderr and new_key not in proc.stdout + proc.stderr
    new = DataSourceStore(pool, cipher=Cipher.from_secret(new_key))
    for ds in made:
        with pytest.raises(DecryptError):
            old.get(ds.tenant_id, ds.id)
        again = new.get(ds.tenant_id, ds.id)
        assert again is not None and again.connection_config == ds.connection_config
    check = subprocess.run(
        [sys.executable, "-m", "cdc", "weaver", "check-key"], capture_output=True, text=True,
        timeout=60, env={**os.environ, "CDC_DATABASE_URL": pg_dsn,
                         "CDC_WEAVER_SECRET_KEY": new_key},
    )
    assert check.returncode == 0, check.stderr
    assert "3 of 3 open" in check.stdout
    third = generate_key()
    stdin = subprocess.run(  # the new key may also come on stdin
        [sys.executable, "-m", "cdc", "weaver", "rotate-key"], input=third + "\n",
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "CDC_DATABASE_URL": pg_dsn, "CDC_WEAVER_SECRET_KEY": new_key},
    )
    assert stdin.returncode == 0, stdin.stderr
    fetched = DataSourceStore(pool, cipher=Cipher.from_secret(third)).get("t2", made[2].id)
    assert fetched is not None and fetched.connection_config["n"] == "a"


def test_rotation_is_all_or_nothing_and_can_be_rerun(pool: Pool, pg_dsn: str, key: str) -> None:
    k1, k2, stray = (Cipher.from_secret(k) for k in (key, generate_key(), generate_key()))
    store = DataSourceStore(pool, cipher=k1)
    a = store.register("t1", "a", "postgres", CONFIG)
    DataSourceStore(pool, cipher=stray).register("t1", "b", "postgres", CONFIG)
    before = raw_config(pg_dsn, a.id)
    with psycopg.connect(pg_dsn) as conn, pytest.raises(DecryptError):
        rotate_key(conn, k1, k2)
    assert raw_config(pg_dsn, a.id) == before  # the stray row stopped everything
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("DELETE FROM weaver.datasource WHERE name = 'b'")
    done = store.rotate_key(k2)
    assert (done.rotated, done.unchanged) == (1, 0)
    assert store.get("t1", a.id) is not None  # the store now uses k2
    with psycopg.connect(pg_dsn) as conn:  # an interrupted rotation can run again
        assert rotate_key(conn, k1, k2).unchanged == 1


def test_datasource_registry(pool: Pool, key: str) -> None:
    store = DataSourceStore(pool, cipher=Cipher.from_secret(key))
    erp = store.register("t1", "erp", "postgres", CONFIG)
    assert erp.status == "ACTIVE"
    with pytest.raises(StoreError, match="already exists"):
        store.register("t1", "erp", "mysql", {})
    with pytest.raises(StoreError, match="unknown ds_type"):
        store.register("t1", "x", "mongodb", {})
    store.register("t2", "erp", "mysql", {"host": "other"})  # names are per tenant
    crm = store.register("t1", "crm", "mysql", {"host": "crm"})
    moved = store.update("t1", erp.id, name="erp-main",
                         connection_config={**CONFIG, "host": "db2"})
    assert moved.name == "erp-main" and moved.connection_config["host"] == "db2"
    assert moved.updated_at >= erp.updated_at and moved.ds_type == "postgres"
    assert store.deactivate("t1", crm.id).status == "INACTIVE"
    assert [d.name for d in store.list_sources("t1")] == ["erp-main"]
    assert [d.name for d in store.list_sources("t1", include_inactive=True)] == [
        "crm", "erp-main"]
    assert store.get("t2", erp.id) is None
    with pytest.raises(StoreError, match="not found"):
        store.update("t2", erp.id, name="stolen")


def test_glossary_upsert_lookup_and_prefix_search(pool: Pool, pg_dsn: str) -> None:
    g = GlossaryStore(pool)
    first = g.upsert("t1", "Revenue", definition="money in")
    second = g.upsert("t1", "revenue", definition="money earned", source_table="sales")
    assert second.id == first.id and second.term == "revenue"
    for term in ("Revenue growth", "Return rate", "100%_done", "1000 done"):
        g.upsert("t1", term)
    g.upsert("t2", "Revenue share")
    assert [e.term for e in g.search_prefix("t1", "REV")] == ["revenue", "Revenue growth"]
    assert [e.term for e in g.search_prefix("t1", "re", limit=2)] == [
        "Return rate", "revenue"]
    assert [e.term for e in g.search_prefix("t1", "100%_")] == ["100%_done"]
    assert g.lookup("t1", "REVENUE") == second and g.lookup("t2", "Revenue") is None
    with pytest.raises(StoreError, match="non-blank"):
        g.upsert("t1", "   ")
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            "EXPLAIN SELECT term FROM weaver.glossary"
            " WHERE tenant_id = 't1' AND lower(term) LIKE 'rev%'"))
    assert "glossary_tenant_term_prefix_idx" in plan
