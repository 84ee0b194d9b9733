"""`cdc slot ...` and `cdc status` with a real relay: lag grows while it is stopped, then heals."""

from __future__ import annotations

import redis

from cdc.settings import Settings
from tests.opsutil import Cli
from tests.relayutil import insert_cases, relay, wait_for


def slot_json(cli: Cli) -> dict[str, object]:
    res = cli("slot", "status", "--json")
    assert res.code == 0, res.err
    got: dict[str, object] = res.json()
    return got


def test_slot_lag_grows_while_stopped_and_returns_to_zero(
    settings: Settings, pg_dsn: str, cli: Cli
) -> None:
    assert cli("slot", "status").code == 1  # no slot yet
    assert cli("slot", "create").code == 0
    before = slot_json(cli)
    assert set(before) >= {
        "active", "active_pid", "confirmed_flush_lsn", "lag_bytes", "wal_status", "safe_wal_size"
    }
    assert before["active"] is False and before["active_pid"] is None
    insert_cases(pg_dsn, 3000)
    stopped = slot_json(cli)
    assert int(stopped["lag_bytes"]) > int(before["lag_bytes"]) + 100_000  # type: ignore[call-overload]
    with relay(settings):
        wait_for(lambda: int(slot_json(cli)["lag_bytes"]) < 1024,  # type: ignore[call-overload]
                 timeout=30, what="slot lag ≈ 0")
        running = slot_json(cli)
        assert running["active"] is True and isinstance(running["active_pid"], int)
        text = cli("slot", "status")
        assert "wal_status" in text.out and "confirmed_flush_lsn" in text.out
    assert slot_json(cli)["active"] is False


def test_slot_drop_needs_yes_and_warns_about_backfill(cli: Cli) -> None:
    assert cli("slot", "create").code == 0
    refused = cli("slot", "drop")
    assert refused.code == 2 and "backfill" in refused.err
    assert cli("slot", "status").code == 0
    assert cli("slot", "drop", "--yes").code == 0
    gone = cli("slot", "status")
    assert gone.code == 1 and "cdc slot create" in gone.err


def test_status_one_screen_relay_up_down_groups_and_watch(
    settings: Settings, pg_dsn: str, cli: Cli, rds: redis.Redis
) -> None:
    assert cli("slot", "create").code == 0
    down = cli("status", "--json")
    assert down.code == 1 and down.json()["relay_up"] is False
    assert any("relay is down" in p for p in down.json()["problems"])
    insert_cases(pg_dsn, 40)
    with relay(settings):
        wait_for(lambda: rds.exists("axiom:core:events") and rds.xlen("axiom:core:events") == 40,
                 what="40 entries")
        rds.xreadgroup("synapse_group", "c1", {"axiom:core:events": ">"}, count=5)
        wait_for(lambda: cli("status", "--json").json()["outbox"] == {"PUBLISHED": 40},
                 what="write-back")
        up = cli("status", "--json")
        snap = up.json()
        assert up.code == 0, snap["problems"]
        assert snap["relay_up"] is True and snap["lag_bytes"] < 64 * 1024
        assert snap["lag_seconds"] == 0 and snap["dlq_length"] == 0
        core = next(s for s in snap["streams"] if s["name"] == "axiom:core:events")
        groups = {g["name"]: g for g in core["groups"]}
        assert core["length"] == 40
        assert (groups["synapse_group"]["pending"], groups["synapse_group"]["lag"]) == (5, 35)
        assert (groups["watch_cep_group"]["pending"], groups["watch_cep_group"]["lag"]) == (0, 40)
        watch = cli("status", "--watch", "--interval", "0.05", "--count", "3")
        assert watch.code == 0 and watch.out.count("axiom-cdc status at") == 3
        assert "relay    UP" in watch.out and "problems none" in watch.out
    after = cli("status")
    assert after.code == 1 and "relay    DOWN" in after.out


def test_status_reports_unreachable_redis_as_a_problem(cli: Cli) -> None:
    from devkit.localservers import free_port

    res = cli("status", CDC_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    assert res.code == 1 and "Redis: CDC_REDIS_URL: cannot reach" in res.out
