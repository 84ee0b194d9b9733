"""Delivery under partial failures (issue [1/5]): refused batches, commits decoded before they
are visible, the least-privilege role, oversized dead letters, a Redis reset, and errors that
must stop the relay with a hint instead of retrying forever. Real PostgreSQL and Redis.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from pathlib import Path

import orjson
import psycopg
import pytest
import redis
from pydantic import SecretStr

from cdc.errors import SinkError
from cdc.pg import slots
from cdc.pipeline.sink import PUBLISH, RedisSink
from cdc.pipeline.writeback import WriteBack
from cdc.settings import Settings
from cdc.streams import keys, luascripts
from cdc.streams.entries import ENTRY_FIELDS
from cdc.streams.redisconn import translate
from devkit.localservers import LocalPostgres, LocalRedis, free_port
from tests.chaosutil import assert_published_rows_have_entries
from tests.opsutil import Cli
from tests.relayutil import (
    cdc,
    http_get,
    insert_cases,
    metric,
    outbox_ids_in_commit_order,
    relay,
    slot_active,
    stream_events,
    wait_for,
)

_roles = itertools.count(1)
DLQ = keys.DLQ


def _entry(key: str, event_id: str) -> list[str]:
    return [key, event_id, "CASE_CREATED", "case", "a1", "t1", "{}", "", "now", "0/1"]


def test_error_reply_to_a_batch_refuses_every_later_batch_of_its_stream(
    redis_url: str, rds: redis.Redis
) -> None:
    """Batch 2 gets an error reply; batch 3, already in flight, must not move the mark."""
    sink = RedisSink(redis_url)
    sink.connect()
    try:
        stream = "axiom:core:events"
        ok1 = {stream: [_entry("k1", "e1")]}
        broken = {stream: [["k2", "e2", "CASE_CREATED"]]}  # too few values: XADD refuses it
        ok3 = {stream: [_entry("k3", "e3")]}
        r1, r2, r3 = sink.send(ok1, {}), sink.send(broken, {}), sink.send(ok3, {})
        assert sink.read_replies(r1) == 1
        with pytest.raises(SinkError):
            sink.read_replies(r2)
        # Old protocol: batch 3 was accepted and its mark k3 hid k2 from every replay.
        with pytest.raises(SinkError, match="an earlier batch did not land"):
            sink.read_replies(r3)
    finally:
        sink.close()
    assert rds.get(keys.hwm("axiom:core:events")) == "k1"
    assert [e["event_id"] for e in stream_events(rds)] == ["e1"]


def test_publish_script_keeps_the_mark_at_what_landed(rds: redis.Redis) -> None:
    """The script refuses a gap whole and, on a failing XADD, marks exactly what landed."""
    sha = rds.script_load(PUBLISH.text)
    assert sha == PUBLISH.sha
    names = luascripts.pack(ENTRY_FIELDS)
    stream, hwm = "s:x", keys.hwm("s:x")
    entries = [_entry("k1", "e1"), ["k2", "e2"], _entry("k3", "e3")]
    with pytest.raises(redis.ResponseError):
        rds.evalsha(sha, 2, stream, hwm, 0, names, luascripts.pack(entries), "")
    assert rds.get(hwm) == "k1" and rds.xlen(stream) == 1
    with pytest.raises(redis.ResponseError, match="CDCGAP"):
        rds.evalsha(sha, 2, stream, hwm, 0, names, luascripts.pack([_entry("k4", "e4")]), "k3")
    assert rds.get(hwm) == "k1" and rds.xlen(stream) == 1
    added = rds.evalsha(sha, 2, stream, hwm, 0, names,
                        luascripts.pack([_entry("k1", "e1"), _entry("k2", "e2")]), "k1")
    assert added == 1 and rds.get(hwm) == "k2"


def test_oom_reply_carries_the_redis_is_full_hint(rds: redis.Redis) -> None:
    """redis-py 8 raises OutOfMemoryError without "OOM" in its text: the hint must still show."""
    rds.config_set("maxmemory", 1)
    try:
        with pytest.raises(redis.ResponseError) as caught:
            rds.set("x", "y")
    finally:
        rds.config_set("maxmemory", 0)
    err = translate(caught.value, "XADD")
    assert "Redis is full" in err.hint and "OOM" in str(err)


@pytest.mark.chaos
def test_commits_decoded_before_they_are_visible(tmp_path: Path, redis_url: str) -> None:
    """Synchronous replication to a standby that never answers: commits wait, invisible.

    The standby is required once the relay streams; only the producers' waits are
    cancelled, as an operator would: the relay's own writes must not wait for it.
    """
    with LocalPostgres() as pg:
        dsn = _migrated_db(pg)
        s = Settings(database_url=SecretStr(dsn), redis_url=SecretStr(redis_url),
                     slot="cdc_syncrep")
        rds = redis.Redis.from_url(redis_url, decode_responses=True)
        assert cdc(s, "slot", "create").returncode == 0
        with relay(s, str(tmp_path / "relay.log")), psycopg.connect(dsn, autocommit=True) as c:
            c.execute("SELECT pg_create_logical_replication_slot('peek', 'wal2json')")
            insert_cases(dsn, 1, tag="warm")
            wait_for(lambda: _status_counts(c) == {"PUBLISHED": 1}, what="a first event")
            c.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
            c.execute("SELECT pg_reload_conf()")
            time.sleep(0.5)
            waiting = [
                threading.Thread(target=_commit_ignoring_cancel, args=(dsn, sql), daemon=True)
                for sql in _three_transactions()
            ]
            for t in waiting:
                t.start()
            wait_for(lambda: len(_commit_lsns(c)) == 4, what="three more commits in the WAL")
            # The old relay had published the 20, marked nothing (0 rows matched) and
            # confirmed past the three commits within a second.
            time.sleep(3)
            assert _status_counts(c) == {"PUBLISHED": 1}  # the 21 rows are not visible yet
            # none of the three confirmed
            assert slots.confirmed_lsn(c, "cdc_syncrep") <= min(_commit_lsns(c)[1:])

            relay_waits = c.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                " AND application_name <> 'producer'").fetchone()
            assert relay_waits == (0,), "the relay's own commits wait for the standby"
            c.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_activity"
                      " WHERE wait_event = 'SyncRep' AND application_name = 'producer'")
            wait_for(lambda: _status_counts(c) == {"PUBLISHED": 21, "DEAD_LETTER": 1},
                     timeout=30, what="every row written back")
            for t in waiting:
                t.join(10)
            wait_for(lambda: rds.xlen(DLQ) == 1, what="one DLQ entry")
            assert rds.xlen("axiom:core:events") == 21
            time.sleep(0.5)
            assert_published_rows_have_entries(dsn, rds)
        rds.close()


def _three_transactions() -> list[str]:
    """Return 20 valid events in three INSERTs; the second also holds one breaking its contract."""
    out = []
    for i in range(3):
        bad = ", ('t1', 'case', 'x', 'CASE_CREATED', '{\"status\": \"OPEN\"}')"
        values = ", ".join(
            f"('t1', 'case', 'a{i}', 'CASE_CREATED',"
            f" '{{\"case_id\": \"c{i}-{j}\", \"status\": \"OPEN\"}}')"
            for j in range(7 if i < 2 else 6)
        )
        out.append("INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id,"
                   f" event_type, payload) VALUES {values}{bad if i == 1 else ''}")
    return out


def _migrated_db(pg: LocalPostgres) -> str:
    from cdc.pg import migrate
    from tests.fix_servers import SQL_DIR

    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("CREATE DATABASE syncrep")
    dsn = pg.dsn.rsplit("/", 1)[0] + "/syncrep"
    migrate.apply(dsn, SQL_DIR)
    return dsn


def _commit_ignoring_cancel(dsn: str, sql: str) -> None:
    with psycopg.connect(dsn, autocommit=True, application_name="producer") as conn:
        conn.execute(sql)  # waits for the standby; a cancel leaves it committed locally


def _commit_lsns(conn: psycopg.Connection[tuple[object, ...]]) -> list[int]:
    """Return the commit LSNs of the transactions that inserted outbox rows, in order."""
    rows = conn.execute(
        "WITH ch AS (SELECT lsn, data::jsonb AS d FROM pg_logical_slot_peek_changes('peek',"
        " NULL, NULL, 'format-version', '2', 'include-xids', '1'))"
        " SELECT lsn - '0/0'::pg_lsn FROM ch WHERE d->>'action' = 'C' AND d->>'xid' IN"
        " (SELECT d->>'xid' FROM ch WHERE d->>'action' = 'I' AND d->>'table' = 'event_outbox')"
        " ORDER BY lsn").fetchall()
    return [int(str(r[0])) for r in rows]


def _status_counts(conn: psycopg.Connection[tuple[object, ...]]) -> dict[str, int]:
    return {str(k): int(str(v)) for k, v in conn.execute(
        "SELECT status, count(*) FROM event_outbox GROUP BY 1")}


def _relay_role(pg_dsn: str) -> tuple[str, str]:
    role = f"relay_lp_{next(_roles)}_{free_port()}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION IN ROLE cdc_relay")
    return role, pg_dsn.replace("postgres@", f"{role}@")


def _levels(findings: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {f["check"]: f for f in findings}


def test_least_privilege_role_runs_the_relay_and_doctor_names_a_revoked_grant(
    settings: Settings, pg_dsn: str, rds: redis.Redis, cli: Cli, tmp_path: Path
) -> None:
    _, dsn = _relay_role(pg_dsn)
    s = settings.model_copy(update={"database_url": SecretStr(dsn)})
    cli.settings = s
    found = _levels(cli("doctor", "--json").json())
    assert found["grants"]["level"] == "ok" and found["role"]["level"] == "ok", found
    assert found["migrations"]["level"] == "ok" and found["wal2json"]["level"] == "ok", found
    good = '{"case_id": "c1", "status": "OPEN"}'
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for payload in (good, '{"status": "OPEN"}', good):  # the middle one is a dead letter
            conn.execute("INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id,"
                         " event_type, payload) VALUES ('t1', 'case', 'a', 'CASE_CREATED', %s)",
                         (payload,))
    res = cdc(s, "run", "--once", timeout=60)
    assert res.returncode == 0, res.stderr
    assert rds.xlen("axiom:core:events") == 2 and rds.xlen(DLQ) == 1
    assert_published_rows_have_entries(pg_dsn, rds)

    # One privilege revoked from the group role: doctor fails and names the one statement.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("REVOKE USAGE ON SEQUENCE public.event_dead_letter_id_seq FROM cdc_relay")
    bad = _levels(cli("doctor", "--json").json())["grants"]
    fix = 'GRANT USAGE ON SEQUENCE public.event_dead_letter_id_seq TO "cdc_relay";'
    assert bad["level"] == "FAIL" and bad["fix"] == fix, bad
    # ...and the relay, meeting a dead letter, stops with the hint (exit 2), no retry loop.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id,"
                     " event_type, payload) VALUES ('t1', 'case', 'a', 'CASE_CREATED',"
                     " '{\"status\": \"x\"}')")
    t0 = time.monotonic()
    stopped = cdc(s, "run", timeout=60)
    assert stopped.returncode == 2, stopped.stderr
    assert "permission denied" in stopped.stderr and "GRANT cdc_relay" in stopped.stderr
    assert time.monotonic() - t0 < 30
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(fix)
    assert _levels(cli("doctor", "--json").json())["grants"]["level"] == "ok"
    assert cdc(s, "run", "--once", timeout=60).returncode == 0
    assert rds.xlen(DLQ) == 2
    assert_published_rows_have_entries(pg_dsn, rds)


def test_migration_006_grants_cdc_relay_exactly_what_doctor_checks(pg_dsn: str) -> None:
    from cdc.pg import privileges

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        granted = {
            (f"{r[0]}.{r[1]}", str(r[2])) for r in conn.execute(
                "SELECT table_schema, table_name, privilege_type FROM"
                " information_schema.role_table_grants WHERE grantee = 'cdc_relay'")
        } | {
            (f"{r[0]}.{r[1]}", "USAGE") for r in conn.execute(
                "SELECT object_schema, object_name FROM information_schema.usage_privileges"
                " WHERE grantee = 'cdc_relay' AND object_type = 'SEQUENCE'")
        }
        wanted = {
            (n.name, p) for n in privileges.relay_needs("public.event_outbox")
            if n.kind != "schema" for p in n.privileges
        }
        assert granted == wanted
        row = conn.execute("SELECT has_schema_privilege('cdc_relay', 'public', 'USAGE')")
        assert row.fetchone() == (True,)


def test_oversized_payload_dead_letter_keeps_identity_size_and_a_prefix(
    settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    big = "x" * 3_000_000
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        eid = str(conn.execute(
            "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
            " payload) VALUES ('t1', 'case', 'a', 'CASE_CREATED', jsonb_build_object("
            "'case_id', 'c', 'status', 'OPEN', 'blob', %s::text)) RETURNING id::text", (big,),
        ).fetchone()[0])  # type: ignore[index]
    assert cdc(settings, "run", "--once", timeout=60).returncode == 0
    (entry,) = stream_events(rds, DLQ)
    assert entry["event_id"] == eid and entry["payload_truncated"] == "1"
    assert int(entry["payload_bytes"]) > 3_000_000
    assert len(entry["payload"].encode()) <= 4096 and big[:1000] in entry["payload"]
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT payload_truncated, payload_bytes, octet_length(payload::text),"
            " payload->>'truncated', event_id::text FROM event_dead_letter").fetchone()
    assert row is not None
    assert row[0] is True and row[1] > 3_000_000 and row[2] < 5000 and row[3] == "true"
    assert row[4] == eid
    assert_published_rows_have_entries(pg_dsn, rds)


def _wal_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return slots.current_lsn(conn)


def _confirmed_past(dsn: str, slot: str, lsn: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return slots.confirmed_lsn(conn, slot) >= lsn


@pytest.mark.chaos
@pytest.mark.parametrize("how", ["flushall", "replaced", "flushall-before-first-batch"])
def test_redis_reset_mid_run_is_reported_and_recovered_without_duplicates(
    how: str, settings: Settings, pg_dsn: str, cli: Cli, tmp_path: Path
) -> None:
    with LocalRedis() as server:
        s = settings.model_copy(update={"redis_url": SecretStr(server.url)})
        cli.settings = s
        client = redis.Redis.from_url(server.url, decode_responses=True)
        port = free_port()
        assert cdc(s, "slot", "create").returncode == 0
        if how == "flushall-before-first-batch":  # marks from an earlier run of the relay
            insert_cases(pg_dsn, 3000, tag="a")
            assert cdc(s, "run", "--once").returncode == 0
        with relay(s, str(tmp_path / "relay.log"), CDC_METRICS_PORT=str(port),
                   CDC_METRICS_SAMPLE_S="0.2"):
            if how != "flushall-before-first-batch":
                insert_cases(pg_dsn, 3000, tag="a")
            after_a = _wal_lsn(pg_dsn)
            wait_for(lambda: client.xlen("axiom:core:events") == 3000, what="3000 entries")
            wait_for(lambda: metric(port, "core_relay_streaming") == 1, what="streaming")
            # Confirmed past the a's, or the relay rightly publishes them again after the reset.
            wait_for(lambda: _confirmed_past(pg_dsn, s.slot, after_a), what="a's confirmed")
            assert metric(port, "core_relay_redis_reset") == 0
            if how.startswith("flushall"):  # this session has sent nothing yet in the 3rd case
                client.flushall()
            else:
                server.kill()  # a new, empty instance on the same address
                server.start()
                client = redis.Redis.from_url(server.url, decode_responses=True)
            insert_cases(pg_dsn, 2000, tag="b")
            wait_for(lambda: client.xlen("axiom:core:events") == 2000, timeout=30,
                     what="the events after the reset")
            wait_for(lambda: metric(port, "core_relay_redis_reset") == 1,
                     what="the reset metric")
            code, ready = http_get(port, "/readyz")
            assert code == 200 and "Redis lost state" in ready
            status = cli("status")
            assert status.code == 1 and "Redis lost its streams" in status.out, status.out
            doctor = _levels(cli("doctor", "--json").json())["redis_reset"]
            assert doctor["level"] == "FAIL" and "--skip-present" in doctor["fix"]
            time.sleep(0.5)
            ids = [e["event_id"] for e in stream_events(client)]
            assert len(ids) == len(set(ids)) == 2000  # nothing twice meanwhile
            # The recovery the problem names: nothing lost, nothing twice.
            res = cli("replay", "--since", "1h", "--skip-present", "--ack-reset")
            assert res.code == 0, res.err
            assert "Redis reset acknowledged" in res.err
            ids = [e["event_id"] for e in stream_events(client)]
            assert len(ids) == len(set(ids)) == 5000
            assert_published_rows_have_entries(pg_dsn, client)  # the a's are back, too
            assert "Redis lost" not in cli("status").out
            wait_for(lambda: metric(port, "core_relay_redis_reset") == 0,
                     what="the reset metric cleared by the acknowledgement")
        assert "Redis lost its state" in (tmp_path / "relay.log").read_text()
        client.close()


def _publish_then_drop_the_slot(dsn: str, rds: redis.Redis, slot: str) -> None:
    """With a relay running: 10 events published, the slot dropped, the relay holding it again."""
    wait_for(lambda: slot_active(dsn, slot), what="the slot held")
    insert_cases(dsn, 10, tag="a")
    wait_for(lambda: rds.xlen("axiom:core:events") == 10, what="10 entries")
    with psycopg.connect(dsn, autocommit=True) as conn:
        def dropped() -> bool:
            conn.execute("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                         " WHERE slot_name = %s AND active_pid IS NOT NULL", (slot,))
            try:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            except psycopg.errors.ObjectInUse:
                return False
            return True
        wait_for(dropped, what="the slot dropped")
    wait_for(lambda: slot_active(dsn, slot), timeout=30, what="the slot again")


@pytest.mark.chaos
def test_slot_dropped_under_a_running_relay_is_created_again(
    settings: Settings, pg_dsn: str, rds: redis.Redis, tmp_path: Path
) -> None:
    with relay(settings, str(tmp_path / "relay.log")):
        _publish_then_drop_the_slot(pg_dsn, rds, settings.slot)
        insert_cases(pg_dsn, 10, tag="b")
        wait_for(lambda: rds.xlen("axiom:core:events") == 20, what="events after the drop")
    assert "created slot" in (tmp_path / "relay.log").read_text()


def test_config_and_privilege_errors_stop_with_a_hint(
    settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    bad_routes = cdc(settings, "run", CDC_ROUTES="*axiom:core:events", timeout=30)
    assert bad_routes.returncode == 2 and "CDC_ROUTES" in bad_routes.stderr
    assert "'*axiom:core:events'" in bad_routes.stderr and "Traceback" not in bad_routes.stderr
    # Refused when settings are built: with no database to reach, the error is still the
    # setting's, not a connection failure (nothing touched PostgreSQL or Redis).
    nowhere = "postgresql://relay:pw@127.0.0.1:1/none"
    for name, value in (("CDC_ROUTES", "WATCH_*=axiom:watches/0"),
                        ("CDC_CONSUMER_GROUPS", "synapse_group,,watch_cep_group")):
        bad = cdc(settings, "run", **{name: value}, CDC_DATABASE_URL=nowhere, timeout=30)
        assert bad.returncode == 2, bad.stderr
        assert name in bad.stderr and "cannot connect" not in bad.stderr, bad.stderr
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE database ="
                            " current_database()").fetchone() == (0,)  # no WAL pinned
    assert cdc(settings, "slot", "create").returncode == 0
    t0 = time.monotonic()
    bad_table = cdc(settings, "run", CDC_OUTBOX_TABLE="public.no_such_outbox", timeout=30)
    assert bad_table.returncode == 2, bad_table.stderr
    assert "CDC_OUTBOX_TABLE" in bad_table.stderr and "fix:" in bad_table.stderr
    role, dsn = _relay_role(pg_dsn)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"REVOKE cdc_relay FROM {role}")
    denied = cdc(settings.model_copy(update={"database_url": SecretStr(dsn)}), "run",
                 timeout=30)
    assert denied.returncode == 2, denied.stderr
    assert "permission denied" in denied.stderr and "GRANT cdc_relay" in denied.stderr
    norep = f"relay_norep_{next(_roles)}_{free_port()}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {norep} LOGIN IN ROLE cdc_relay")  # no REPLICATION
    cannot_stream = cdc(settings.model_copy(update={
        "database_url": SecretStr(pg_dsn.replace("postgres@", f"{norep}@"))}), "run", timeout=30)
    assert cannot_stream.returncode == 2, cannot_stream.stderr
    assert "WITH REPLICATION" in cannot_stream.stderr
    assert time.monotonic() - t0 < 40  # stopped, not retried with backoff forever


@pytest.mark.parametrize("key", ['{"b": [1, 2.50], "a": true}', "true", "12.50", '"plain"'])
def test_non_string_idempotency_key_reads_as_postgres_prints_it(
    key: str, settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
            " payload) VALUES ('t1', 'thing', 'a', 'THING_HAPPENED',"
            " jsonb_build_object('idempotency_key', %s::jsonb))"
            " RETURNING payload->>'idempotency_key'", (key,),
        ).fetchone()
    assert row is not None
    assert cdc(settings, "run", "--once", timeout=60).returncode == 0
    (entry,) = stream_events(rds)
    assert entry["idempotency_key"] == row[0], (entry["idempotency_key"], row[0])
    assert orjson.loads(entry["payload"])["idempotency_key"] == orjson.loads(key)


def test_a_role_without_the_grants_stops_at_slot_creation(
    settings: Settings, pg_dsn: str
) -> None:
    """No slot yet, REPLICATION but no cdc_relay: creating the slot's backfill queue is
    refused; the relay must stop with the grant, not create and drop slots forever."""
    role = f"relay_nogrant_{next(_roles)}_{free_port()}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN REPLICATION")
    s = settings.model_copy(update={"database_url": SecretStr(pg_dsn.replace(
        "postgres@", f"{role}@"))})
    t0 = time.monotonic()
    res = cdc(s, "run", timeout=60)
    assert res.returncode == 2, res.stderr
    assert "permission denied" in res.stderr and "GRANT cdc_relay" in res.stderr
    assert time.monotonic() - t0 < 30
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                            (settings.slot,)).fetchone() == (0,)


def test_write_back_owes_a_missing_row_until_older_transactions_end_then_drops_it(
    settings: Settings, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A row missing from the UPDATE is owed (the LSN held below it) while a transaction
    older than the miss may still commit it; once every such one has ended, it was deleted."""
    insert_cases(pg_dsn, 1, tag="seen")
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        (seen,) = conn.execute("SELECT id::text FROM event_outbox").fetchone()  # type: ignore[misc]
    gone = str(uuid.uuid4())  # acknowledged by Redis, never visible here: deleted
    older = psycopg.connect(pg_dsn)
    older.execute("SELECT pg_current_xact_id()")  # an open transaction older than the miss
    wb = WriteBack.open(settings.database_url, table=settings.outbox_table, start_lsn=10)
    try:
        with caplog.at_level(logging.WARNING, logger="cdc.pipeline.writeback"):
            wb.submit([seen, gone], 100)
            wb.flush(10)
            assert wb.owed == 1 and wb.safe(200) == 10  # not confirmed past the owed row
            time.sleep(1.5)  # retried meanwhile; the older transaction still runs
            assert (wb.owed, wb.dropped, wb.safe(200)) == (1, 0, 10)
            older.commit()
            wait_for(lambda: wb.owed == 0, what="the owed row given up")
            assert (wb.dropped, wb.safe(200)) == (1, 200)
        assert any("deleted before they could be marked" in r.getMessage() and gone in
                   r.getMessage() for r in caplog.records)
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            assert conn.execute("SELECT status FROM event_outbox").fetchall() == [("PUBLISHED",)]
    finally:
        older.close()
        wb.close()


@pytest.mark.chaos
def test_least_privilege_role_recreates_a_dropped_slot_and_records_a_redis_reset(
    settings: Settings, pg_dsn: str, rds: redis.Redis, tmp_path: Path
) -> None:
    """The relay's fault paths (slot re-creation, backfill, reset record) need only cdc_relay."""
    _, dsn = _relay_role(pg_dsn)
    s = settings.model_copy(update={"database_url": SecretStr(dsn)})
    port, log = free_port(), tmp_path / "relay.log"
    with relay(s, str(log), CDC_METRICS_PORT=str(port), CDC_METRICS_SAMPLE_S="0.2"):
        _publish_then_drop_the_slot(pg_dsn, rds, s.slot)
        insert_cases(pg_dsn, 10, tag="b")
        wait_for(lambda: {e["event_id"] for e in stream_events(rds)}
                 >= set(outbox_ids_in_commit_order(pg_dsn)),
                 what="every row in the stream after the re-creation")
        after = _wal_lsn(pg_dsn)
        wait_for(lambda: _confirmed_past(pg_dsn, s.slot, after), what="the b's confirmed")
        rds.flushall()
        insert_cases(pg_dsn, 10, tag="c")
        wait_for(lambda: metric(port, "core_relay_redis_reset") == 1, what="the reset recorded")
        wait_for(lambda: rds.xlen("axiom:core:events") == 10, what="the c's after the reset")
    text = log.read_text()
    assert "created slot" in text and "Redis lost its state" in text
    assert "permission denied" not in text
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        assert conn.execute("SELECT reset_count FROM public.cdc_redis_state"
                            " WHERE slot_name = %s", (s.slot,)).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FILTER (WHERE status <> 'PUBLISHED'), count(*)"
                            " FROM event_outbox").fetchone() == (0, 30)

