"""Weaver's materialized tables and Synapse's model versions; every store survives a restart."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from cdc.domain.stores import models as models_mod
from cdc.domain.stores.base import Pool
from cdc.domain.stores.crypto import Cipher, generate_key
from cdc.domain.stores.datasources import DataSourceStore
from cdc.domain.stores.glossary import GlossaryStore
from cdc.domain.stores.materialized import MaterializedTableStore
from cdc.domain.stores.mining import MiningStore
from cdc.domain.stores.models import MiningModelStore
from cdc.errors import StoreError

CONFIG = {"host": "erp.internal", "password": "pw"}
BPMN = b"<definitions><process id='p'/></definitions>"


def open_pool(dsn: str) -> Pool:
    return ConnectionPool(dsn, min_size=1, max_size=8, open=True, timeout=20)


@pytest.fixture
def pool(pg_dsn: str) -> Iterator[Pool]:
    with open_pool(pg_dsn) as p:
        yield p


@pytest.fixture
def cipher() -> Cipher:
    return Cipher.from_secret(generate_key())


def events(dsn: str) -> list[tuple[str, str, dict[str, Any]]]:
    with psycopg.connect(dsn) as conn:
        return [tuple(r) for r in conn.execute(  # type: ignore[misc]
            "SELECT event_type, aggregate_id, payload FROM public.event_outbox"
            " ORDER BY created_at, id"
        ).fetchall()]


def finished_task(pool: Pool, tenant: str = "t1") -> Any:
    mining = MiningStore(pool)
    task = mining.create(tenant, "discover", {"log": "orders"})
    mining.start(tenant, task.id)
    mining.complete(tenant, task.id, result_type="stats", result_data={"cases": 3})
    return task


def test_every_store_survives_a_postgres_restart(pg_server: Any, pg_dsn: str,
                                                 cipher: Cipher) -> None:
    with open_pool(pg_dsn) as first:
        task = finished_task(first)
        models = MiningModelStore(first)
        v1 = models.save("t1", task.id, "bpmn", BPMN)
        v2 = models.save("t1", task.id, "pnml", b"<pnml/>")
        ds = DataSourceStore(first, cipher=cipher).register("t1", "erp", "postgres", CONFIG)
        tables = MaterializedTableStore(first)
        mt = tables.register("t1", ds.id, "mart.orders_daily", "SELECT * FROM orders")
        tables.start_refresh("t1", mt.id)
        mt = tables.finish_refresh("t1", mt.id, row_count=42)
        term = GlossaryStore(first).upsert("t1", "Lead time", definition="order to delivery")
        mining_before = MiningStore(first).get("t1", task.id)
        results_before = MiningStore(first).results("t1", task.id)
    pg_server.restart()  # the server itself: nothing survives but what is on disk
    with open_pool(pg_dsn) as second:
        models = MiningModelStore(second)
        assert models.latest("t1", task.id) == v2
        assert models.get("t1", task.id, 1) == v1 and models.versions("t1", task.id) == [2, 1]
        assert MaterializedTableStore(second).get("t1", mt.id) == mt
        assert mt.refresh_state == "READY" and mt.last_row_count == 42
        assert DataSourceStore(second, cipher=cipher).get("t1", ds.id) == ds
        assert GlossaryStore(second).lookup("t1", "lead time") == term
        assert MiningStore(second).get("t1", task.id) == mining_before
        assert MiningStore(second).results("t1", task.id) == results_before


def test_no_store_keeps_state_in_memory(pool: Pool, cipher: Cipher) -> None:
    task = finished_task(pool)
    ds_store = DataSourceStore(pool, cipher=cipher)
    ds = ds_store.register("t1", "erp", "postgres", CONFIG)
    tables = MaterializedTableStore(pool)
    tables.register("t1", ds.id, "mart.a", "SELECT 1")
    models = MiningModelStore(pool)
    models.save("t1", task.id, "bpmn", BPMN)
    glossary = GlossaryStore(pool)
    glossary.upsert("t1", "x")
    for store in (MiningStore(pool), ds_store, tables, models, glossary):
        held = {k: type(v).__name__ for k, v in vars(store).items()
                if isinstance(v, dict | list | set | tuple)}
        assert held == {}, f"{type(store).__name__} holds {held}"


def test_materialized_table_lifecycle_emits_each_change(
    pool: Pool, pg_dsn: str, cipher: Cipher
) -> None:
    ds = DataSourceStore(pool, cipher=cipher).register("t1", "erp", "postgres", CONFIG)
    tables = MaterializedTableStore(pool)
    mt = tables.register("t1", ds.id, " mart.orders_daily ", "SELECT * FROM orders")
    assert (mt.target, mt.refresh_state, mt.refresh_count, mt.last_refresh_at) == (
        "mart.orders_daily", "PENDING", 0, None)
    with pytest.raises(StoreError, match="needs REFRESHING"):
        tables.finish_refresh("t1", mt.id, row_count=1)
    tables.start_refresh("t1", mt.id)
    with pytest.raises(StoreError, match="it is REFRESHING"):
        tables.start_refresh("t1", mt.id)  # one refresher at a time
    with pytest.raises(StoreError, match="it is REFRESHING"):
        tables.redefine("t1", mt.id, "SELECT 2")
    done = tables.finish_refresh("t1", mt.id, row_count=10)
    assert done.refresh_state == "READY" and done.last_row_count == 10
    assert done.last_refresh_at is not None
    tables.start_refresh("t1", mt.id)
    failed = tables.fail_refresh("t1", mt.id, "source timed out")
    assert (failed.refresh_state, failed.refresh_count, failed.last_error) == (
        "FAILED", 2, "source timed out")
    assert failed.last_refresh_at == done.last_refresh_at  # the last good refresh stays
    again = tables.redefine("t1", mt.id, "SELECT id FROM orders")
    assert again.refresh_state == "PENDING" and again.definition == "SELECT id FROM orders"
    assert [t.id for t in tables.list_tables("t1", datasource_id=ds.id)] == [mt.id]

    got = events(pg_dsn)
    assert [e[0] for e in got] == [
        "MATERIALIZED_TABLE_REGISTERED", "MATERIALIZED_TABLE_REFRESHED",
        "MATERIALIZED_TABLE_REFRESH_FAILED", "MATERIALIZED_TABLE_REDEFINED"]
    assert all(e[1] == str(mt.id) for e in got)
    assert got[1][2] == {"table_id": str(mt.id), "target": "mart.orders_daily", "refresh": 1,
                         "row_count": 10,
                         "idempotency_key": f"materialized_table:{mt.id}:refresh:1"}
    assert got[2][2]["refresh"] == 2 and got[2][2]["error"] == "source timed out"


def test_materialized_table_refusals(pool: Pool, cipher: Cipher) -> None:
    store = DataSourceStore(pool, cipher=cipher)
    mine = store.register("t1", "erp", "postgres", CONFIG)
    theirs = store.register("t2", "erp", "postgres", CONFIG)
    tables = MaterializedTableStore(pool)
    with pytest.raises(StoreError, match="not found for tenant t1"):
        tables.register("t1", theirs.id, "mart.a", "SELECT 1")  # another tenant's source
    mt = tables.register("t1", mine.id, "mart.a", "SELECT 1")
    with pytest.raises(StoreError, match="already exists"):
        tables.register("t1", mine.id, "mart.a", "SELECT 2")
    with pytest.raises(StoreError, match="not found for tenant t2"):
        tables.start_refresh("t2", mt.id)
    with pytest.raises(StoreError, match="blank"):
        tables.redefine("t1", mt.id, "  ")


def test_a_rolled_back_refresh_leaves_no_state_and_no_event(
    pool: Pool, pg_dsn: str, cipher: Cipher
) -> None:
    ds = DataSourceStore(pool, cipher=cipher).register("t1", "erp", "postgres", CONFIG)
    tables = MaterializedTableStore(pool)
    mt = tables.register("t1", ds.id, "mart.a", "SELECT 1")
    tables.start_refresh("t1", mt.id)
    with psycopg.connect(pg_dsn) as conn:
        tables.finish_refresh("t1", mt.id, row_count=5, conn=conn)
        n = conn.execute("SELECT count(*) FROM public.event_outbox").fetchone()
        assert n == (2,)  # the event is in the caller's transaction...
        assert [e[0] for e in events(pg_dsn)] == ["MATERIALIZED_TABLE_REGISTERED"]  # ...only
        conn.rollback()
    row = tables.get("t1", mt.id)
    assert row is not None and row.refresh_state == "REFRESHING" and row.last_row_count is None
    assert [e[0] for e in events(pg_dsn)] == ["MATERIALIZED_TABLE_REGISTERED"]


def test_model_versions_are_numbered_under_concurrency(pool: Pool, pg_dsn: str) -> None:
    task = finished_task(pool)
    models = MiningModelStore(pool)
    barrier = threading.Barrier(8)
    saved: list[int] = []

    def save(i: int) -> None:
        barrier.wait()
        saved.append(models.save("t1", task.id, "dfg", f"model {i}".encode()).version)

    threads = [threading.Thread(target=save, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(saved) == list(range(1, 9))
    latest = models.latest("t1", task.id)
    assert latest is not None and latest.version == 8 and latest.body.startswith(b"model ")
    saved_events = [e for e in events(pg_dsn) if e[0] == "MINING_MODEL_SAVED"]
    assert sorted(e[2]["version"] for e in saved_events) == list(range(1, 9))
    assert {e[2]["idempotency_key"] for e in saved_events} == {
        f"mining_model:{task.id}:v{v}" for v in range(1, 9)}


def test_model_refusals_leave_the_callers_transaction_usable(pool: Pool, pg_dsn: str) -> None:
    task = finished_task(pool)
    models = MiningModelStore(pool)
    with pytest.raises(StoreError, match="not found for tenant t2"):
        models.save("t2", task.id, "bpmn", BPMN)
    with psycopg.connect(pg_dsn) as conn:
        with pytest.raises(StoreError, match="not a short lower-case name"):
            models.save("t1", task.id, "BPMN 2.0", BPMN, conn=conn)
        assert models.save("t1", task.id, "bpmn", BPMN, conn=conn).version == 1
        conn.commit()
    assert models.versions("t1", task.id) == [1]
    assert models.latest("t2", task.id) is None  # another tenant reads nothing


def test_a_rolled_back_model_save_leaves_no_version_and_no_event(
    pool: Pool, pg_dsn: str
) -> None:
    task = finished_task(pool)
    models = MiningModelStore(pool)
    before = [e[0] for e in events(pg_dsn)]
    with psycopg.connect(pg_dsn) as conn:
        assert models.save("t1", task.id, "bpmn", BPMN, conn=conn).version == 1
        n = conn.execute("SELECT count(*) FROM public.event_outbox"
                         " WHERE event_type = 'MINING_MODEL_SAVED'").fetchone()
        assert n == (1,)  # the version and its event in the caller's transaction...
        conn.rollback()  # ...and gone with it
    assert models.versions("t1", task.id) == [] and models.latest("t1", task.id) is None
    assert [e[0] for e in events(pg_dsn)] == before
    assert models.save("t1", task.id, "bpmn", BPMN).version == 1  # the number was not spent


def test_newest_model_per_task_is_one_indexed_query(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO synapse.mining_task (id, tenant_id, task_type)"
            " SELECT md5('task' || i)::uuid, 't' || (i % 20), 'discover'"
            " FROM generate_series(1, 2000) i"
        )
        conn.execute(
            "INSERT INTO synapse.mining_model (tenant_id, task_id, version, model_format, body)"
            " SELECT t.tenant_id, t.id, v, 'dfg', '\\x00' FROM synapse.mining_task t,"
            " generate_series(1, 10) v"
        )
        conn.execute("ANALYZE synapse.mining_model")
        some = conn.execute("SELECT id FROM synapse.mining_task WHERE tenant_id = 't3' LIMIT 1"
                            ).fetchone()
        assert some is not None
        def plan(query: str, params: tuple[Any, ...]) -> str:
            return "\n".join(r[0] for r in conn.execute(f"EXPLAIN {query}", params))

        # One task's newest version: a walk down the index, stopped after one row.
        one = plan(models_mod.LATEST_SQL, ("t3", some[0]))
        assert "Index Scan using mining_model_tenant_task_version_uidx" in one, one
        assert "Limit" in one and "Sort" not in one, one
        # Every task of a tenant: the same index (the planner may sort a bitmap scan instead).
        each = plan(models_mod.LATEST_PER_TASK_SQL, ("t3",))
        assert "mining_model_tenant_task_version_uidx" in each and "Seq Scan" not in each, each
        rows = conn.execute(models_mod.LATEST_PER_TASK_SQL, ("t3",)).fetchall()
        assert len(rows) == 100 and {r[3] for r in rows} == {10}
