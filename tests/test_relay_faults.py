"""Crashes and outages: kill -9 mid-run, Redis stopped mid-run. Nothing lost, nothing twice."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from cdc.settings import Settings
from devkit.localservers import LocalRedis
from tests.chaosutil import Producer
from tests.relayutil import (
    cdc,
    insert_cases,
    relay,
    slot_active,
    start_relay,
    stream_events,
    wait_for,
)


def assert_exactly_once_in_order(events: list[dict[str, str]], n: int) -> None:
    ids = [e["event_id"] for e in events]
    assert len(ids) == n, f"{len(ids)} entries for {n} events"
    assert len(set(ids)) == n, f"{len(ids) - len(set(ids))} duplicates"
    import orjson

    seqs = [orjson.loads(e["payload"])["seq"] for e in events]
    assert seqs == sorted(seqs), "stream order differs from commit order"


@pytest.mark.slow
def test_kill9_during_50k_run_then_restart(
    settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    n = 50_000
    assert cdc(settings, "slot", "create").returncode == 0
    producer = Producer(pg_dsn, n, per_tx=250, pause=0.02, lean=True)  # ~5 s of inserts
    thread = producer.start()
    rng = random.Random(7)
    at_kill: list[int] = []
    for _ in range(3):
        proc = start_relay(settings)
        # Kill only a relay that holds the slot and is publishing: one that never started,
        # or died by itself, would make this a test of nothing.
        wait_for(lambda: slot_active(pg_dsn, settings.slot), what="the relay to hold the slot")
        before = rds.xlen("axiom:core:events")
        wait_for(lambda b=before: rds.xlen("axiom:core:events") > b or producer.done == n,
                 what="the relay to publish")
        time.sleep(rng.uniform(0.1, 0.8))
        assert proc.poll() is None, "the relay exited before it was killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        at_kill.append(int(rds.xlen("axiom:core:events")))
    thread.join(120)
    assert producer.error is None and producer.done == n
    with relay(settings):
        wait_for(lambda: rds.xlen("axiom:core:events") >= n, timeout=120, what=f"{n} entries")
        time.sleep(0.5)  # anything extra (a duplicate) would land now
    events = stream_events(rds)
    print(f"kill -9 run: events={n} entries_at_kills={at_kill} entries={len(events)}")
    # Every kill landed mid-run: each life published more, and the first was cut short.
    assert at_kill == sorted(at_kill) and len(set(at_kill)) >= 2 and at_kill[0] < n, at_kill
    assert_exactly_once_in_order(events, n)


@pytest.mark.slow
def test_redis_stopped_5s_mid_run_loses_nothing_and_dead_letters_nothing(
    settings: Settings, pg_dsn: str, tmp_path: Path
) -> None:
    n = 20_000
    with LocalRedis(appendonly=True) as server:
        s = settings.model_copy(update={"redis_url": SecretStr(server.url)})
        client = redis.Redis.from_url(server.url, decode_responses=True)
        assert cdc(s, "slot", "create").returncode == 0
        log = tmp_path / "relay.log"
        with relay(s, str(log)) as proc:
            producer = threading.Thread(
                target=insert_cases, args=(pg_dsn, n), kwargs={"per_tx": 100}
            )
            producer.start()
            wait_for(
                lambda: client.exists("axiom:core:events") and client.xlen("axiom:core:events") > 0,
                what="first entries",
            )
            server.stop()
            time.sleep(5)
            server.start()
            producer.join()
            try:
                wait_for(lambda: client.xlen("axiom:core:events") >= n, timeout=60, what="all")
            except AssertionError:
                print(log.read_text()[-3000:])
                raise
            time.sleep(0.5)
            assert proc.poll() is None, "relay must ride out a Redis outage"
        events = stream_events(client)
        assert_exactly_once_in_order(events, n)
        assert client.xlen("axiom:dlq:events") == 0
        client.close()
