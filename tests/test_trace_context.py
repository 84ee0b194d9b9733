"""Trace context end to end: request span -> outbox row -> stream entry -> the handler's span."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from cdc.consumers.worker import AsyncConsumer, Consumer, Entry
from cdc.domain import outbox
from cdc.domain.sqla import emit, emit_async
from cdc.errors import ConfigError
from cdc.pg import migrate
from cdc.settings import SQL_DIR, Settings
from cdc.streams import keys
from tests.relayutil import cdc
from tests.test_outbox_schema import add
from tests.test_sqla import sa_url

_EXPORTER = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The SDK with an in-memory exporter, installed once per process as the global provider."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        trace.set_tracer_provider(provider)
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def alert(n: int) -> outbox.Event:
    return outbox.Event(
        tenant_id="acme", aggregate_type="watch", aggregate_id=f"w{n}",
        event_type="WATCH_ALERT_TRIGGERED",
        payload={"watch_id": f"w{n}", "alert_id": f"a{n}", "severity": "HIGH"},
    )


def consumer_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == trace.SpanKind.CONSUMER]


def test_one_trace_from_the_request_to_the_handler(
    settings: Settings, spans: InMemorySpanExporter, rds: redis.Redis
) -> None:
    tracer = trace.get_tracer("test")
    dsn = settings.database_url.get_secret_value()
    assert cdc(settings, "slot", "create").returncode == 0  # the events stream from the WAL
    parent = SpanContext(trace_id=0x0AF7651916CD43DD8448EB211C80319C,
                         span_id=0xB7AD6B7169203331, is_remote=True,
                         trace_flags=TraceFlags(TraceFlags.SAMPLED),
                         trace_state=TraceState([("acme", "blue")]))
    with psycopg.connect(dsn) as conn:
        with trace.use_span(NonRecordingSpan(parent)), \
                tracer.start_as_current_span("POST /alerts") as request:
            outbox.emit(conn, alert(1))
        outbox.emit(conn, alert(2))  # no span: no trace context
        conn.commit()
        rows = conn.execute("SELECT aggregate_id, traceparent, tracestate FROM event_outbox"
                            " ORDER BY aggregate_id").fetchall()
    ctx = request.get_span_context()
    traceparent = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-01"
    assert rows == [("w1", traceparent, "acme=blue"), ("w2", None, None)]

    assert cdc(settings, "run", "--once").returncode == 0
    entries = {f["aggregate_id"]: f for _, f in rds.xrange(keys.WATCHES)}
    assert entries["w1"]["traceparent"] == traceparent
    assert entries["w1"]["tracestate"] == "acme=blue"
    assert "traceparent" not in entries["w2"] and "tracestate" not in entries["w2"]

    seen: dict[str, Any] = {}

    def handler(entry: Entry) -> None:
        seen[entry.fields["aggregate_id"]] = trace.get_current_span().get_span_context()

    c = Consumer(redis_url=settings.redis_url.get_secret_value(), group="g",
                 streams=[keys.WATCHES], start_id="0", handler=handler)
    c.run(limit=2, timeout=10)
    c.close()
    assert seen["w1"].trace_id == ctx.trace_id == parent.trace_id  # one trace id throughout
    assert seen["w1"].trace_state.get("acme") == "blue"
    assert not seen["w2"].is_valid  # an untraced event runs outside any span
    (span,) = consumer_spans(spans)
    assert span.parent is not None and span.parent.span_id == ctx.span_id
    assert span.name == "WATCH_ALERT_TRIGGERED process"
    assert span.attributes is not None
    assert span.attributes["messaging.destination.name"] == keys.WATCHES


def test_async_session_to_async_consumer(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test")
    url = sa_url(settings.database_url.get_secret_value())

    async def produce() -> int:
        engine = create_async_engine(url)
        try:
            with tracer.start_as_current_span("POST /alerts") as request:
                async with AsyncSession(engine) as session, session.begin():
                    await emit_async(session, alert(1))
        finally:
            await engine.dispose()
        trace_id: int = request.get_span_context().trace_id
        return trace_id

    trace_id = asyncio.run(produce())
    assert cdc(settings, "run", "--once").returncode == 0  # no slot before: the backfill path
    seen: list[int] = []

    async def handler(entry: Entry) -> None:
        await asyncio.sleep(0)
        seen.append(trace.get_current_span().get_span_context().trace_id)

    async def consume() -> None:
        c = AsyncConsumer(redis_url=settings.redis_url.get_secret_value(), group="g",
                          streams=[keys.WATCHES], start_id="0", handler=handler)
        try:
            await c.run(limit=1, timeout=10)
        finally:
            await c.aclose()

    asyncio.run(consume())
    assert seen == [trace_id]
    assert [s.context.trace_id for s in consumer_spans(spans)] == [trace_id]


def test_sync_session_carries_the_request_span_to_the_consumer(
    settings: Settings, spans: InMemorySpanExporter
) -> None:
    tracer = trace.get_tracer("test")
    engine = create_engine(sa_url(settings.database_url.get_secret_value()))
    try:
        with tracer.start_as_current_span("POST /alerts") as request, Session(engine) as session, \
                session.begin():
            emit(session, alert(1))
        with Session(engine) as session, session.begin():
            emit(session, alert(2))  # no span: no trace context
    finally:
        engine.dispose()
    ctx = request.get_span_context()
    with psycopg.connect(settings.database_url.get_secret_value()) as conn:
        rows = conn.execute("SELECT aggregate_id, traceparent FROM event_outbox"
                            " ORDER BY aggregate_id").fetchall()
    flags = f"{int(ctx.trace_flags):02x}"
    assert rows == [("w1", f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{flags}"), ("w2", None)]
    assert cdc(settings, "run", "--once").returncode == 0
    seen: dict[str, int] = {}

    def handler(entry: Entry) -> None:
        seen[entry.fields["aggregate_id"]] = trace.get_current_span().get_span_context().trace_id

    c = Consumer(redis_url=settings.redis_url.get_secret_value(), group="g",
                 streams=[keys.WATCHES], start_id="0", handler=handler)
    try:
        c.run(limit=2, timeout=10)
    finally:
        c.close()
    assert seen["w1"] == ctx.trace_id and seen["w2"] != ctx.trace_id
    assert [s.context.trace_id for s in consumer_spans(spans)
            if s.parent is not None] == [ctx.trace_id]


def test_the_columns_are_added_in_place_and_the_write_back_stays_hot(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE event_outbox DROP COLUMN traceparent, DROP COLUMN tracestate")
        conn.execute("DELETE FROM cdc_schema_migrations WHERE version = 9")
        add(conn, 1000)
        before = conn.execute("SELECT pg_relation_filenode('event_outbox')").fetchone()
        assert [m.version for m in migrate.apply(pg_dsn, SQL_DIR)] == [9]
        after = conn.execute("SELECT pg_relation_filenode('event_outbox')").fetchone()
        assert before == after  # no rewrite
        ids = [r[0] for r in conn.execute(
            "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
            " payload, traceparent, tracestate) SELECT 't1', 'case', 'c' || g, 'CASE_CREATED',"
            " jsonb_build_object('case_id', 'c' || g, 'status', 'OPEN'),"
            " '00-' || md5(g::text) || '-' || left(md5(g::text), 16) || '-01', 'acme=blue'"
            " FROM generate_series(1, 2000) g RETURNING id").fetchall()]
        with conn.transaction():
            conn.execute("UPDATE event_outbox SET status = 'PUBLISHED', published_at = now()"
                         " WHERE id = ANY(%s::uuid[])", (ids,))
            row = conn.execute(
                "SELECT pg_stat_get_xact_tuples_updated('event_outbox'::regclass),"
                " pg_stat_get_xact_tuples_hot_updated('event_outbox'::regclass)").fetchone()
        assert row is not None and row[0] == 2000 and row[1] >= 0.99 * 2000, row


def test_a_traced_emit_into_an_outbox_without_the_columns_names_the_migration(
    pg_dsn: str, spans: InMemorySpanExporter
) -> None:
    with psycopg.connect(pg_dsn) as conn:
        conn.execute("ALTER TABLE event_outbox DROP COLUMN traceparent, DROP COLUMN tracestate")
        conn.commit()
        outbox.emit(conn, alert(1))  # untraced: works as before
        with trace.get_tracer("test").start_as_current_span("request"), \
                pytest.raises(ConfigError, match="traceparent") as exc:
            outbox.emit(conn, alert(2))
        assert "009" in exc.value.hint
