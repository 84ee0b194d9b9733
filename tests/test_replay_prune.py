"""`cdc replay` republishes exactly a time range; `cdc prune` deletes old PUBLISHED rows only."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import psycopg
import redis

from cdc.settings import Settings
from tests.opsutil import Cli, insert_at
from tests.relayutil import STREAMS, cdc, stream_events

CASE = '{"case_id": "c", "status": "OPEN"}'
WATCH = '{"watch_id": "w", "alert_id": "a", "severity": "HIGH"}'




def iso(t: datetime) -> str:
    return t.isoformat()


def replays(rds: redis.Redis) -> dict[str, list[dict[str, str]]]:
    return {s: [e for e in stream_events(rds, s) if "replay" in e] for s in STREAMS}


def test_replay_of_a_time_range_republishes_exactly_those_rows(
    settings: Settings, pg_dsn: str, cli: Cli, rds: redis.Redis
) -> None:
    t0 = datetime.now(UTC).replace(microsecond=0)
    assert cdc(settings, "slot", "create").returncode == 0
    early = insert_at(pg_dsn, [("t1", "CASE_CREATED", CASE, iso(t0 - timedelta(hours=3)))] * 4)
    middle = insert_at(
        pg_dsn,
        [("t1", "CASE_CREATED", CASE, iso(t0 - timedelta(hours=2, minutes=m))) for m in range(3)]
        + [("t2", "CASE_CREATED", CASE, iso(t0 - timedelta(hours=2)))] * 2
        + [("t2", "WATCH_ALERT_TRIGGERED", WATCH, iso(t0 - timedelta(hours=2)))] * 2,
    )
    late = insert_at(pg_dsn, [("t1", "CASE_CREATED", CASE, iso(t0 - timedelta(hours=1)))] * 3)
    assert cdc(settings, "run", "--once").returncode == 0
    originals = {s: len(stream_events(rds, s)) for s in STREAMS}
    assert sum(originals.values()) == len(early + middle + late)

    since = iso(t0 - timedelta(hours=2, minutes=30))
    until = iso(t0 - timedelta(hours=1, minutes=30))
    dry = cli("replay", "--since", since, "--until", until, "--dry-run", "--json")
    assert dry.code == 0 and dry.json()["rows"] == len(middle) and dry.json()["added"] == 0
    assert replays(rds) == {s: [] for s in STREAMS}

    run = cli("replay", "--since", since, "--until", until, "--json")
    assert run.code == 0, run.err
    got = replays(rds)
    ids = [e["event_id"] for s in STREAMS for e in got[s]]
    assert sorted(ids) == sorted(middle) and len(ids) == len(set(ids))
    assert sorted(e["event_id"] for e in got["axiom:watches"]) == sorted(middle[5:])
    assert {e["replay"] for s in STREAMS for e in got[s]} == {run.json()["replay_id"]}

    resumed = cli("replay", "--since", since, "--until", until, "--id", run.json()["replay_id"],
                  "--json")
    assert resumed.json()["added"] == 0 and resumed.json()["already"] == len(middle)

    only = cli("replay", "--since", since, "--until", until, "--tenant", "t2",
               "--event-type", "CASE_CREATED", "--json")
    assert only.json()["added"] == 2
    last = [e for e in stream_events(rds) if e.get("replay") == only.json()["replay_id"]]
    assert sorted(e["event_id"] for e in last) == sorted(middle[3:5])
    text = cli("replay", "--since", "90m")
    assert text.code == 0 and f"{len(late)} row(s) matched" in text.out and "replay=r" in text.out


def test_replay_usage_errors_exit_2(cli: Cli) -> None:
    assert cli("replay").code == 2
    assert cli("replay", "--since", "yesterday-ish").code == 2
    assert cli("replay", "--since", "1h", "--until", "2h").code == 2


def test_prune_deletes_only_old_published_rows_in_batches_and_skips_locked(
    pg_dsn: str, cli: Cli
) -> None:
    old, recent = iso(datetime.now(UTC) - timedelta(days=9)), iso(datetime.now(UTC))
    doomed = insert_at(pg_dsn, [("t1", "CASE_CREATED", CASE, old)] * 1200, status="PUBLISHED")
    insert_at(pg_dsn, [("t1", "CASE_CREATED", CASE, old)] * 30, status="PENDING")
    insert_at(pg_dsn, [("t1", "CASE_CREATED", CASE, old)] * 5, status="DEAD_LETTER")
    insert_at(pg_dsn, [("t1", "CASE_CREATED", CASE, recent)] * 40, status="PUBLISHED")
    dry = cli("prune", "--older-than", "7d", "--dry-run", "--json")
    assert dry.code == 0 and dry.json()["deleted"] == 1200

    locked, release = threading.Event(), threading.Event()

    def hold_one_row() -> None:  # a producer or relay transaction holding one old row
        with psycopg.connect(pg_dsn) as conn:
            conn.execute("SELECT 1 FROM event_outbox WHERE id = %s FOR UPDATE", (doomed[0],))
            locked.set()
            release.wait(30)

    holder = threading.Thread(target=hold_one_row)
    holder.start()
    try:
        assert locked.wait(10)
        res = cli("prune", "--older-than", "7d", "--batch-size", "500", "--json")
    finally:
        release.set()
        holder.join()
    assert res.code == 0 and res.json()["deleted"] == 1199 and res.json()["batches"] == 3
    with psycopg.connect(pg_dsn) as conn:
        left = dict(conn.execute("SELECT status, count(*) FROM event_outbox GROUP BY 1").fetchall())
    assert left == {"PUBLISHED": 41, "PENDING": 30, "DEAD_LETTER": 5}
    again = cli("prune", "--older-than", "7d")
    assert again.code == 0 and "deleted 1 PUBLISHED row(s)" in again.out
    assert cli("prune", "--older-than", "7 fortnights").code == 2
