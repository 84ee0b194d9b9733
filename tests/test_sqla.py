"""cdc.domain.sqla: emit inside SQLAlchemy Session and AsyncSession transactions (psycopg 3)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from cdc.domain.outbox import Event
from cdc.domain.sqla import emit, emit_async
from cdc.errors import ConfigError, EventError
from cdc.pipeline.contracts import Registry

STRICT = Registry(unknown="dead_letter")


def alert(key: str | None = "k1", **payload: Any) -> Event:
    return Event(
        tenant_id="acme", aggregate_type="watch", aggregate_id="w1",
        event_type="WATCH_ALERT_TRIGGERED",
        payload=payload or {"watch_id": "w1", "alert_id": "a1", "severity": "HIGH"},
        idempotency_key=key,
    )


def sa_url(dsn: str) -> str:
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


def outbox_rows(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT id, tenant_id, event_type, payload->>'idempotency_key', status"
            " FROM public.event_outbox ORDER BY created_at, id").fetchall()


def cases(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM core.core_case").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def engine(pg_dsn: str) -> Iterator[Engine]:
    eng = create_engine(sa_url(pg_dsn))
    yield eng
    eng.dispose()


def test_session_commits_the_event_with_the_change(engine: Engine, pg_dsn: str) -> None:
    with Session(engine) as session, session.begin():
        session.execute(text("INSERT INTO core.core_case (tenant_id, status)"
                             " VALUES ('acme', 'OPEN')"))
        event_id = emit(session, alert(), registry=STRICT)
        assert outbox_rows(pg_dsn) == []  # not visible before the session commits
    rows = outbox_rows(pg_dsn)  # one transaction, one created_at: compare as sets
    assert {(r[2], r[3]) for r in rows} == {("CASE_CREATED", None),
                                           ("WATCH_ALERT_TRIGGERED", "k1")}
    assert event_id in [r[0] for r in rows] and cases(pg_dsn) == 1


def test_session_rollback_takes_the_event_with_it(engine: Engine, pg_dsn: str) -> None:
    with Session(engine) as session:
        session.execute(text("INSERT INTO core.core_case (tenant_id, status)"
                             " VALUES ('acme', 'OPEN')"))
        emit(session, alert())
        session.rollback()
    with engine.connect() as conn:  # a Connection works too
        emit(conn, alert("k2"))
        conn.rollback()
    assert outbox_rows(pg_dsn) == [] and cases(pg_dsn) == 0


def test_session_contract_and_idempotency_errors(engine: Engine, pg_dsn: str) -> None:
    with Session(engine) as session:
        with pytest.raises(EventError, match="breaks its contract"):
            emit(session, alert(watch_id="w1"), registry=STRICT)  # nothing sent...
        emit(session, alert())  # ...so the transaction goes on
        session.commit()
    with Session(engine) as session:
        with pytest.raises(EventError, match="already emitted") as exc:
            emit(session, alert())
        assert "roll back" in exc.value.hint
        session.rollback()
        with pytest.raises(ConfigError, match="does not exist"):
            emit(session, alert("k3"), table="public.no_outbox")
        session.rollback()
        with pytest.raises(ConfigError, match=r"schema\.name"):
            emit(session, alert("k3"), table="event_outbox; DROP TABLE x")
    assert [r[3] for r in outbox_rows(pg_dsn)] == ["k1"]


def test_async_session_commits_rolls_back_and_refuses_duplicates(pg_dsn: str) -> None:
    async def scenario() -> list[str]:
        engine = create_async_engine(sa_url(pg_dsn))
        seen: list[str] = []
        try:
            async with AsyncSession(engine) as session, session.begin():
                await session.execute(text("INSERT INTO core.core_case (tenant_id, status)"
                                           " VALUES ('acme', 'OPEN')"))
                await emit_async(session, alert(), registry=STRICT)
            async with AsyncSession(engine) as session:
                await emit_async(session, alert("k2"))
                await session.rollback()
            async with AsyncSession(engine) as session:
                try:
                    await emit_async(session, alert())
                except EventError as e:
                    seen.append(str(e))
                await session.rollback()
            async with engine.connect() as conn:  # an AsyncConnection works too
                await emit_async(conn, alert("k4"))
                await conn.commit()
        finally:
            await engine.dispose()
        return seen

    errors = asyncio.run(scenario())
    assert len(errors) == 1 and "already emitted" in errors[0]
    assert {(r[2], r[3]) for r in outbox_rows(pg_dsn)} == {
        ("CASE_CREATED", None), ("WATCH_ALERT_TRIGGERED", "k1"), ("WATCH_ALERT_TRIGGERED", "k4")}
    assert cases(pg_dsn) == 1
