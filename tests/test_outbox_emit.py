"""`cdc.domain.outbox.emit`: one row in the caller's transaction, validated before the insert."""

from __future__ import annotations

from dataclasses import replace

import psycopg
import pytest

from cdc.domain.outbox import Event, emit
from cdc.errors import ConfigError, EventError
from cdc.pipeline.contracts import Registry

DONE = Event(
    tenant_id="t1", aggregate_type="mining_task", aggregate_id="task-1",
    event_type="MINING_TASK_COMPLETED",
    payload={"task_id": "task-1", "task_type": "discover", "result_id": "r-1"},
    idempotency_key="task-1:completed",
)


def count(dsn: str, table: str = "public.event_outbox") -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    assert row is not None
    return int(row[0])


def test_emit_commits_and_rolls_back_with_the_caller(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        event_id = emit(conn, DONE)
        assert count(pg_dsn) == 0  # not visible before the caller commits
        conn.commit()
        with conn.cursor() as cur:
            emit(cur, Event("t1", "mining_task", "task-2", "MINING_TASK_FAILED",
                            {"task_id": "task-2", "task_type": "discover", "error": "boom"}))
        conn.rollback()
        row = conn.execute(
            "SELECT tenant_id, aggregate_type, aggregate_id, event_type, payload, status"
            " FROM public.event_outbox WHERE id = %s", (event_id,),
        ).fetchone()
    assert row == ("t1", "mining_task", "task-1", "MINING_TASK_COMPLETED",
                   {**DONE.payload, "idempotency_key": "task-1:completed"}, "PENDING")
    assert count(pg_dsn) == 1


def test_contract_violation_raises_before_the_insert(pg_dsn: str) -> None:
    bad = Event("t1", "mining_task", "task-1", "MINING_TASK_COMPLETED",
                {"task_id": "task-1", "task_type": "discover"})  # no result_id
    with psycopg.connect(pg_dsn) as conn:
        with pytest.raises(EventError, match="result_id"):
            emit(conn, bad)
        with pytest.raises(EventError, match="aggregate_id"):
            emit(conn, Event("t1", "mining_task", "", "ANYTHING"))
        with pytest.raises(EventError, match="no contract"):
            emit(conn, Event("t1", "x", "1", "NEW"), registry=Registry(unknown="dead_letter"))
        with pytest.raises(EventError, match="over the 64-byte limit"):
            emit(conn, Event("t1", "x", "1", "BIG", {"blob": "x" * 100}), max_bytes=64)
        with pytest.raises(EventError, match="given twice"):
            emit(conn, Event("t1", "x", "1", "K", {"idempotency_key": "a"}, idempotency_key="b"))
        emit(conn, Event("t1", "x", "1", "UNHEARD_OF"))  # unknown types pass by default
        conn.commit()  # the transaction was never aborted: nothing bad reached the server
    assert count(pg_dsn) == 1


def test_repeated_idempotency_key_is_refused(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        emit(conn, DONE)
        conn.commit()
        with pytest.raises(EventError, match="already emitted"):
            emit(conn, DONE)
        conn.rollback()
        emit(conn, replace(DONE, tenant_id="t2"))  # keys are per tenant
        conn.commit()
    assert count(pg_dsn) == 2


def test_configurable_table_is_quoted_safely(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("CREATE SCHEMA other")
        conn.execute("CREATE TABLE other.outbox (LIKE public.event_outbox INCLUDING ALL)")
        conn.commit()
        emit(conn, DONE, table="other.outbox")
        conn.commit()
        for bad in ("event_outbox", "public.event_outbox; DROP TABLE x", 'public."x"'):
            with pytest.raises(ConfigError, match=r"schema\.name"):
                emit(conn, DONE, table=bad)
        with pytest.raises(ConfigError, match="does not exist"):
            emit(conn, DONE, table="public.nowhere")
    assert count(pg_dsn, "other.outbox") == 1 and count(pg_dsn) == 0
