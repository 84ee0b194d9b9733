"""The relay against real PostgreSQL (wal2json) and Redis: delivery, order, failures, HA."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from cdc.pg import slots
from cdc.settings import Settings
from tests.relayutil import (
    cdc,
    insert_cases,
    relay,
    slot_active,
    slot_lag,
    stream_events,
    wait_for,
)


def insert(
    dsn: str, event_type: str, payload: str, *, tenant: str = "t1", created: str | None = None
) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
            " payload, created_at) VALUES (%s, 'case', 'a1', %s, %s,"
            " coalesce(%s::timestamptz, now())) RETURNING id::text",
            (tenant, event_type, payload, created),
        ).fetchone()
        assert row is not None
        return str(row[0])


def statuses(dsn: str) -> dict[str, int]:
    with psycopg.connect(dsn) as conn:
        return dict(conn.execute("SELECT status, count(*) FROM event_outbox GROUP BY 1").fetchall())


def test_pending_to_published_routed_and_both_groups_receive(
    settings: Settings, rds: redis.Redis
) -> None:
    dsn = settings.database_url.get_secret_value()
    assert cdc(settings, "slot", "create").returncode == 0
    ids = {
        "case": insert(
            dsn, "CASE_CREATED", '{"case_id": "c1", "status": "OPEN", "idempotency_key": "k1"}'
        ),
        "watch": insert(
            dsn, "WATCH_ALERT_TRIGGERED", '{"watch_id": "w", "alert_id": "a", "severity": "HIGH"}'
        ),
        "worker": insert(dsn, "WORKER_TASK_COMPLETED", '{"task_id": "t", "worker_id": "w"}'),
        "other": insert(dsn, "SOMETHING_ELSE", '{"x": 1}'),
    }
    proc = cdc(settings, "run", "--once")
    assert proc.returncode == 0, proc.stderr
    core = stream_events(rds, "axiom:core:events")
    assert [e["event_id"] for e in core] == [ids["case"], ids["other"]]
    assert [e["event_id"] for e in stream_events(rds, "axiom:watches")] == [ids["watch"]]
    assert [e["event_id"] for e in stream_events(rds, "axiom:workers")] == [ids["worker"]]
    first = core[0]
    assert first["event_type"] == "CASE_CREATED" and first["tenant_id"] == "t1"
    assert first["idempotency_key"] == "k1" and first["aggregate_type"] == "case"
    assert (
        '"case_id": "c1"' in first["payload"] and first["created_at"] and "/" in first["commit_lsn"]
    )
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT status, published_at IS NOT NULL FROM event_outbox").fetchall()
    assert rows and all(r == ("PUBLISHED", True) for r in rows)
    for group in ("synapse_group", "watch_cep_group"):
        got = rds.xreadgroup(group, "c1", {"axiom:core:events": ">"}, count=100)
        assert [f["event_id"] for _, f in got[0][1]] == [ids["case"], ids["other"]]


def test_mark_published_false_is_pure_cdc(settings: Settings, rds: redis.Redis) -> None:
    dsn = settings.database_url.get_secret_value()
    assert cdc(settings, "slot", "create").returncode == 0
    insert_cases(dsn, 50)
    assert cdc(settings, "run", "--once", CDC_MARK_PUBLISHED="false").returncode == 0
    assert len(stream_events(rds)) == 50
    assert statuses(dsn) == {"PENDING": 50}


def test_logical_messages_between_inserts_are_passed_over(
    settings: Settings, rds: redis.Redis
) -> None:
    """Heartbeat tools emit logical messages; wal2json streams them whatever the filters."""
    dsn = settings.database_url.get_secret_value()
    assert cdc(settings, "slot", "create").returncode == 0
    insert_cases(dsn, 3)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_logical_emit_message(false, 'heartbeat', 'beat')")
        conn.execute("SELECT pg_logical_emit_message(true, 'tx', 'in a transaction')")
    insert_cases(dsn, 2, tag="after-")
    proc = cdc(settings, "run", "--once")
    assert proc.returncode == 0, proc.stderr
    assert len(stream_events(rds)) == 5
    assert statuses(dsn) == {"PUBLISHED": 5}


def test_backfill_publishes_pre_slot_rows_once_in_created_at_order(
    settings: Settings, rds: redis.Redis
) -> None:
    dsn = settings.database_url.get_secret_value()
    late = insert(
        dsn, "CASE_CREATED", '{"case_id": "late", "status": "OPEN"}', created="2026-01-03"
    )
    early = insert(
        dsn, "CASE_CREATED", '{"case_id": "early", "status": "OPEN"}', created="2026-01-01"
    )
    mid = insert(dsn, "CASE_CREATED", '{"case_id": "mid", "status": "OPEN"}', created="2026-01-02")
    proc = cdc(settings, "run", "--once")  # creates the slot, backfills, streams
    assert proc.returncode == 0, proc.stderr
    after = insert(
        dsn, "CASE_CREATED", '{"case_id": "after", "status": "OPEN"}', created="2025-01-01"
    )
    assert cdc(settings, "run", "--once").returncode == 0
    assert [e["event_id"] for e in stream_events(rds)] == [early, mid, late, after]
    assert statuses(dsn) == {"PUBLISHED": 4}


def test_bad_events_retry_three_times_then_dead_letter(
    settings: Settings, rds: redis.Redis
) -> None:
    dsn = settings.database_url.get_secret_value()
    assert cdc(settings, "slot", "create").returncode == 0
    good1 = insert(dsn, "CASE_CREATED", '{"case_id": "c1", "status": "OPEN"}')
    bad = insert(dsn, "CASE_CREATED", '{"status": "OPEN"}')  # no case_id: breaks its contract
    big = insert(dsn, "SOMETHING", '{"blob": "' + "x" * 5000 + '"}')
    good2 = insert(dsn, "CASE_CREATED", '{"case_id": "c2", "status": "OPEN"}')
    proc = cdc(settings, "run", "--once", CDC_MAX_EVENT_BYTES="4096")
    assert proc.returncode == 0, proc.stderr
    assert [e["event_id"] for e in stream_events(rds)] == [good1, good2]
    dlq = {e["event_id"]: e for e in stream_events(rds, "axiom:dlq:events")}
    assert set(dlq) == {bad, big}
    assert "case_id" in dlq[bad]["error"]
    assert "over the 4096-byte limit (CDC_MAX_EVENT_BYTES)" in dlq[big]["error"]  # the one wording
    with psycopg.connect(dsn) as conn:
        rows = {
            r[0]: r[1:]
            for r in conn.execute(
                "SELECT id::text, status, retry_count, last_error FROM event_outbox"
            ).fetchall()
        }
        dead = conn.execute("SELECT event_id::text, retry_count FROM event_dead_letter").fetchall()
    assert rows[bad][0:2] == ("DEAD_LETTER", 3) and "case_id" in rows[bad][2]
    assert rows[big][0:2] == ("DEAD_LETTER", 3)
    assert rows[good1][0] == "PUBLISHED"
    assert sorted(dead) == sorted([(bad, 3), (big, 3)])
    # A replay of the same WAL does not add a second DLQ entry.
    assert cdc(settings, "run", "--once").returncode == 0
    assert len(stream_events(rds, "axiom:dlq:events")) == 2


def test_no_route_and_unknown_types_can_dead_letter(settings: Settings, rds: redis.Redis) -> None:
    dsn = settings.database_url.get_secret_value()
    assert cdc(settings, "slot", "create").returncode == 0
    unrouted = insert(dsn, "ORPHAN_EVENT", "{}")
    watch = insert(dsn, "WATCH_X", "{}")
    proc = cdc(settings, "run", "--once", CDC_ROUTES="WATCH_*=axiom:watches")
    assert proc.returncode == 0, proc.stderr
    assert [e["event_id"] for e in stream_events(rds, "axiom:watches")] == [watch]
    dlq = stream_events(rds, "axiom:dlq:events")
    assert [e["event_id"] for e in dlq] == [unrouted] and "no route" in dlq[0]["error"]


def test_duplicate_idempotency_key_fails_in_the_producer_transaction(pg_dsn: str) -> None:
    payload = '{"idempotency_key": "same"}'
    sql = (
        "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)"
        " VALUES (%s, 'case', 'a', 'X', %s)"
    )
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql, ("t1", payload))
        conn.execute(sql, ("t2", payload))  # another tenant may reuse a key
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(sql, ("t1", payload))


def test_sink_replay_of_a_published_batch_adds_nothing(redis_url: str, rds: redis.Redis) -> None:
    from cdc.pipeline.sink import RedisSink

    sink = RedisSink(redis_url)
    sink.connect()
    entries = [
        [f"{1:016x}:{p:08x}", f"id{p}", "T", "a", "1", "t", "{}", "", "now", "0/1"]
        for p in (1, 2, 3)
    ]
    assert sink.read_replies(sink.send({"s": entries}, {})) == 3
    # the same transaction replayed whole, plus one new row of a later commit
    later = [f"{2:016x}:{1:08x}", "id4", "T", "a", "1", "t", "{}", "", "now", "0/2"]
    assert sink.read_replies(sink.send({"s": [*entries, later]}, {})) == 1
    sink.close()
    assert [f["event_id"] for _, f in rds.xrange("s")] == ["id1", "id2", "id3", "id4"]


def test_idle_slot_advances_past_unrelated_writes(settings: Settings, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE unrelated (x int, pad text)")
    with relay(settings):
        wait_for(lambda: slot_active(pg_dsn, settings.slot), what="relay to hold the slot")
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            for _ in range(100):
                conn.execute(
                    "INSERT INTO unrelated SELECT g, repeat('p', 50)"
                    " FROM generate_series(1, 1000) g"
                )
            end = slots.current_lsn(conn)
        wait_for(lambda: slot_lag(pg_dsn, settings.slot) < 1024, timeout=20, what="slot lag ≈ 0")
    # Stopped, the slot holds what the relay confirmed: past every unrelated write. (The lag
    # itself may grow again now: autovacuum's WAL after 100,000 inserts is nobody's to confirm.)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        behind = end - slots.confirmed_lsn(conn, settings.slot)
    assert behind <= 0, f"the slot stopped {behind} bytes short of 100,000 unrelated writes"


def test_busy_slot_standby_takes_over(
    settings: Settings, pg_dsn: str, rds: redis.Redis, tmp_path: Path
) -> None:
    with relay(settings) as first:
        wait_for(lambda: slot_active(pg_dsn, settings.slot), what="first relay to hold the slot")
        log = tmp_path / "standby.log"
        with relay(settings, str(log)) as second:
            wait_for(lambda: "standing by" in log.read_text(), what="standby message")
            insert_cases(pg_dsn, 10)
            wait_for(lambda: rds.xlen("axiom:core:events") == 10, what="first relay publishing")
            first.send_signal(signal.SIGTERM)
            assert first.wait(10) == 0
            insert_cases(pg_dsn, 10, tag="b")
            wait_for(lambda: rds.xlen("axiom:core:events") == 20, what="standby taking over")
            assert second.poll() is None
    assert len({e["event_id"] for e in stream_events(rds)}) == 20


def test_sigterm_flushes_and_exits_zero_within_5s(
    settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    with relay(settings) as proc:
        wait_for(lambda: slot_active(pg_dsn, settings.slot), what="relay to hold the slot")
        insert_cases(pg_dsn, 2000)
        proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        assert proc.wait(10) == 0
        assert time.monotonic() - t0 < 5
    # whatever it had not confirmed is delivered by the next run, never twice
    assert cdc(settings, "run", "--once").returncode == 0
    events = stream_events(rds)
    assert len(events) == len({e["event_id"] for e in events}) == 2000


def test_postgres_restart_reconnects_and_resumes(
    settings: Settings, pg_server: Any, pg_dsn: str, rds: redis.Redis
) -> None:
    with relay(settings):
        wait_for(lambda: slot_active(pg_dsn, settings.slot), what="relay to hold the slot")
        insert_cases(pg_dsn, 100)
        wait_for(lambda: rds.xlen("axiom:core:events") == 100, what="first 100")
        pg_server.restart()
        insert_cases(pg_dsn, 100, tag="after")
        wait_for(
            lambda: rds.xlen("axiom:core:events") == 200, timeout=30, what="events after restart"
        )
    assert len({e["event_id"] for e in stream_events(rds)}) == 200


def test_metrics_endpoint_exports_the_seed_metrics(
    settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    import urllib.request

    from devkit.localservers import free_port

    port = free_port()
    with relay(settings, CDC_METRICS_PORT=str(port), CDC_METRICS_SAMPLE_S="0.2"):
        wait_for(lambda: slot_active(pg_dsn, settings.slot), what="relay to hold the slot")
        insert_cases(pg_dsn, 30)
        wait_for(lambda: rds.xlen("axiom:core:events") == 30, what="30 entries")

        def scrape() -> dict[str, float]:
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
            return {
                line.split(" ")[0]: float(line.split(" ")[1])
                for line in body.decode().splitlines()
                if line and not line.startswith("#")
            }

        lag_key = 'core_consumer_group_lag{group="synapse_group",stream="axiom:core:events"}'
        # One sample may read Redis after the XADD and PostgreSQL before the write-back's
        # UPDATE (the Marker runs beside the loop): wait for a sample after both.
        wait_for(
            lambda: (
                (m := scrape()).get("core_event_outbox_published_total") == 30
                and m.get(lag_key) == 30 and m.get("core_event_outbox_pending") == 0
            ),
            what="published count, group lag and no row left PENDING",
        )
        got = scrape()
    for name in (
        "core_event_outbox_failed_total",
        "core_event_outbox_pending",
        "core_relay_lag_seconds",
        "core_dlq_depth",
        "core_relay_slot_lag_bytes",
        "core_relay_commit_to_ack_seconds_count",
    ):
        assert name in got, name
    assert got["core_relay_commit_to_ack_seconds_count"] >= 1
    lag = 'core_consumer_group_lag{group="synapse_group",stream="axiom:core:events"}'
    assert got[lag] == 30  # nobody consumed yet
    assert got["core_event_outbox_pending"] == 0


def test_relay_on_an_unmigrated_database_stops_with_the_fix(pg_server: Any, redis_url: str) -> None:
    with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS t_unmigrated WITH (FORCE)")
        conn.execute("CREATE DATABASE t_unmigrated")
    dsn = f"postgresql://postgres:hunter2@127.0.0.1:{pg_server.port}/t_unmigrated"
    s = Settings(database_url=dsn, redis_url=redis_url, slot="unmigrated")  # type: ignore[arg-type]
    try:
        proc = cdc(s, "run", "--once")
        assert proc.returncode == 1
        assert "cdc migrate" in proc.stderr and "Traceback" not in proc.stderr
        assert "hunter2" not in proc.stderr + proc.stdout  # the password is never logged
    finally:
        with psycopg.connect(pg_server.dsn, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = 'unmigrated'"
            )
            conn.execute("DROP DATABASE t_unmigrated WITH (FORCE)")


def test_recreated_slot_behind_old_marks_is_not_mistaken_for_a_replay(
    settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    """After a failover the new primary's WAL can be behind the marks Redis holds."""
    assert cdc(settings, "slot", "create").returncode == 0
    insert_cases(pg_dsn, 5)
    assert cdc(settings, "run", "--once").returncode == 0
    from cdc.streams import keys

    mark = rds.get(keys.hwm("axiom:core:events"))  # format 2: the stream in a hash tag
    assert mark is not None
    epoch = mark.split(":")[0]
    # marks of a primary that had gone far ahead of the WAL we will stream next
    rds.set(keys.hwm("axiom:core:events"), f"{epoch}:{'f' * 16}:{'f' * 8}")
    assert cdc(settings, "slot", "drop", "--yes").returncode == 0
    assert cdc(settings, "slot", "create").returncode == 0
    insert_cases(pg_dsn, 5, tag="after-failover")
    assert cdc(settings, "run", "--once").returncode == 0
    assert len(stream_events(rds)) == 10


def test_streams_are_capped_when_configured(settings: Settings, rds: redis.Redis) -> None:
    dsn = settings.database_url.get_secret_value()
    assert cdc(settings, "slot", "create").returncode == 0
    insert_cases(dsn, 2000)
    assert cdc(settings, "run", "--once", CDC_STREAM_MAXLEN="100").returncode == 0
    length = rds.xlen("axiom:core:events")
    assert 100 <= length < 400, length  # MAXLEN ~ trims whole macro nodes


def test_backfill_waits_for_a_locked_row_instead_of_skipping_it(
    settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    """A skipped row would come later with a key below the mark and be dropped."""
    import subprocess
    import sys

    from tests.relayutil import relay_env

    ids = [
        insert(
            pg_dsn,
            "CASE_CREATED",
            f'{{"case_id": "c{i}", "status": "OPEN"}}',
            created=f"2026-01-0{i}",
        )
        for i in (1, 2, 3)
    ]
    assert cdc(settings, "slot", "create").returncode == 0
    with psycopg.connect(pg_dsn) as holder:
        holder.execute("SELECT 1 FROM event_outbox WHERE id = %s FOR UPDATE", (ids[1],))
        proc = subprocess.Popen(
            [sys.executable, "-m", "cdc", "run", "--once"],
            env=relay_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)
        assert proc.poll() is None, "the backfill must wait for the lock"
        holder.commit()
    assert proc.wait(60) == 0
    assert [e["event_id"] for e in stream_events(rds)] == ids
    assert statuses(pg_dsn) == {"PUBLISHED": 3}


def test_redis_url_redaction_hides_passwords_anywhere() -> None:
    from cdc.streams.urls import redact_url

    assert "s3cret" not in redact_url("redis://user:s3cret@h:6379/0")
    assert "s3cret" not in redact_url("redis://h:6379/0?password=s3cret")
    assert redact_url("redis://h:6379/0") == "redis://h:6379/0"
