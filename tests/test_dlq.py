"""`cdc dlq ...`: a dead letter made by the real relay is listed, shown, replayed once, purged."""

from __future__ import annotations

import psycopg
import redis

from cdc.settings import Settings
from cdc.streams import keys
from cdc.streams.redisconn import connect
from cdc.streams.republish import Republisher, Row
from tests.opsutil import Cli
from tests.relayutil import cdc, stream_events

BAD = '{"case_id": "c9", "idempotency_key": "k9"}'  # CASE_CREATED without its status




def dead_letter(settings: Settings, dsn: str) -> str:
    """Have the relay dead-letter one CASE_CREATED that breaks its contract; return its id."""
    assert cdc(settings, "slot", "create").returncode == 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        event_id = str(conn.execute(
            "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
            " payload) VALUES ('t1', 'case', 'c9', 'CASE_CREATED', %s) RETURNING id::text",
            (BAD,),
        ).fetchone()[0])  # type: ignore[index]
    proc = cdc(settings, "run", "--once")
    assert proc.returncode == 0, proc.stderr
    return event_id


def on_stream(rds: redis.Redis, event_id: str) -> list[dict[str, str]]:
    return [e for e in stream_events(rds) if e["event_id"] == event_id]


def test_dlq_list_show_replay_once_and_purge(
    settings: Settings, pg_dsn: str, cli: Cli, rds: redis.Redis
) -> None:
    event_id = dead_letter(settings, pg_dsn)
    assert rds.xlen(keys.DLQ) == 1 and on_stream(rds, event_id) == []
    listed = cli("dlq", "list", "--json")
    assert listed.code == 0 and [d["event_id"] for d in listed.json()] == [event_id]
    dl_id = str(listed.json()[0]["id"])
    shown = cli("dlq", "show", dl_id)
    assert shown.code == 0 and "breaks its contract" in shown.out and '"case_id": "c9"' in shown.out
    assert cli("dlq", "show", event_id, "--json").json()["retry_count"] == 3
    assert cli("dlq", "show", "999999").code == 1
    assert cli("dlq", "replay").code == 2  # neither IDs nor --all

    still_bad = cli("dlq", "replay", dl_id)
    assert still_bad.code == 1 and "NOT replayed" in still_bad.out
    assert "--no-validate" in still_bad.out
    assert on_stream(rds, event_id) == []

    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # the runbook's fix: repair payload
        conn.execute(
            "UPDATE event_dead_letter SET payload = payload || '{\"status\": \"OPEN\"}'"
            " WHERE event_id = %s", (event_id,),
        )
    done = cli("dlq", "replay", "--all")
    assert done.code == 0 and f"replayed {event_id}" in done.out
    again = cli("dlq", "replay", event_id, "--json")
    assert again.code == 0 and again.json()["already"] == [event_id]
    landed = on_stream(rds, event_id)
    assert len(landed) == 1, landed
    assert landed[0]["replay"] == "dlq" and landed[0]["idempotency_key"] == "k9"
    assert '"status": "OPEN"' in landed[0]["payload"]
    assert rds.xlen(keys.DLQ) == 0  # its DLQ entry left in the same step
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT d.replayed_at IS NOT NULL, d.replay_count, d.stream, o.status"
            " FROM event_dead_letter d JOIN event_outbox o ON o.id = d.event_id"
        ).fetchone()
    assert row == (True, 1, "axiom:core:events", "PUBLISHED")
    assert cli("dlq", "list", "--json").json() == []
    assert len(cli("dlq", "list", "--all", "--json").json()) == 1

    assert cli("dlq", "purge").code == 2
    purged = cli("dlq", "purge", "--yes", "--replayed")
    assert purged.code == 0 and "purged 1 dead letter(s)" in purged.out
    assert cli("dlq", "list", "--all", "--json").json() == []
    assert not rds.sismember(keys.dlq_replayed("axiom:core:events"), event_id)


def test_replay_after_a_crash_between_redis_and_postgres_lands_once(
    settings: Settings, pg_dsn: str, cli: Cli, rds: redis.Redis
) -> None:
    event_id = dead_letter(settings, pg_dsn)
    with psycopg.connect(pg_dsn) as conn:
        created = str(conn.execute(
            "SELECT created_at::text FROM event_dead_letter WHERE event_id = %s", (event_id,)
        ).fetchone()[0])  # type: ignore[index]
    # A replay that reached Redis and died before marking the row in PostgreSQL.
    client = connect(settings.redis_url.get_secret_value())
    pub = Republisher(client, set_key=keys.dlq_replayed, dlq_stream=keys.DLQ)
    row = Row(event_id, "CASE_CREATED", "case", "c9", "t1", BAD, created)
    assert pub.publish("axiom:core:events", [row], "dlq") == [event_id]
    client.close()
    rerun = cli("dlq", "replay", "--all", "--no-validate", "--json")
    assert rerun.code == 0 and rerun.json()["already"] == [event_id]
    assert len(on_stream(rds, event_id)) == 1
    assert cli("dlq", "list", "--json").json() == []  # marked replayed all the same
    purged = cli("dlq", "purge", "--yes")
    assert purged.code == 0 and "purged 1" in purged.out
