"""Trimming against a real Redis: never below what a group has not acked; alarm over the cap."""

from __future__ import annotations

import random
import subprocess
import sys

import redis
from prometheus_client import generate_latest

from cdc.ops.trim import Trimmer, trim_registry
from tests.test_consumer import STREAM, fill


def read_ack(rds: redis.Redis, group: str, n: int, *, ack: int | None = None) -> list[str]:
    """Deliver up to n new entries to `group`, ack the first `ack` of them; return their ids."""
    got = rds.xreadgroup(group, "c", {STREAM: ">"}, count=n) if n > 0 else []
    ids = [eid for eid, _ in got[0][1]] if got else []
    acked = ids if ack is None else ids[:ack]
    if acked:
        rds.xack(STREAM, group, *acked)
    return ids


def unacked(rds: redis.Redis, group: str) -> list[str]:
    """Return every id the group still needs: pending ones, then the never-delivered ones."""
    info = next(g for g in rds.xinfo_groups(STREAM) if g["name"] == group)
    pend = [p["message_id"] for p in rds.xpending_range(STREAM, group, "-", "+", 100_000)]
    undelivered = [eid for eid, _ in rds.xrange(STREAM, min="(" + info["last-delivered-id"])]
    return pend + undelivered


def test_slow_group_never_loses_an_unacked_entry(redis_url: str, rds: redis.Redis) -> None:
    fill(rds, 1000)
    for g in ("fast", "slow"):
        rds.xgroup_create(STREAM, g, id="0")
    read_ack(rds, "fast", 1000)
    read_ack(rds, "slow", 300, ack=200)  # 100 delivered but pending
    t = Trimmer(redis_url=redis_url, streams=[STREAM], cap=0)
    first = t.trim_once()[0]
    oldest_pending = rds.xpending(STREAM, "slow")["min"]
    assert first.removed == 200 and first.holder == "slow" and first.min_id == oldest_pending
    assert rds.xrange(STREAM, count=1)[0][0] == oldest_pending
    rng = random.Random(3)
    removed = first.removed
    for step in range(60):
        fill(rds, rng.randint(0, 40), start=1000 + step * 40)
        read_ack(rds, "fast", rng.randint(0, 60))
        read_ack(rds, "slow", rng.randint(0, 20), ack=rng.randint(0, 20))
        if rng.random() < 0.3:  # the slow group acks some of its older pending entries
            old = [p["message_id"] for p in rds.xpending_range(STREAM, "slow", "-", "+", 5)]
            if old:
                rds.xack(STREAM, "slow", *old)
        needed = set(unacked(rds, "slow")) | set(unacked(rds, "fast"))
        removed += t.trim_once()[0].removed
        present = {eid for eid, _ in rds.xrange(STREAM)}
        assert needed <= present, f"step {step}: trimmed {len(needed - present)} unacked entries"
    assert removed > 200
    t.close()


def test_group_that_read_nothing_holds_the_whole_stream(redis_url: str, rds: redis.Redis) -> None:
    fill(rds, 50)
    rds.xgroup_create(STREAM, "reader", id="0")
    rds.xgroup_create(STREAM, "idle", id="0")
    read_ack(rds, "reader", 50)
    t = Trimmer(redis_url=redis_url, streams=[STREAM, "no:groups"], cap=0)
    with_groups, no_stream = t.trim_once()
    assert with_groups.removed == 0 and with_groups.length == 50 and with_groups.holder == "idle"
    assert no_stream.removed == 0 and no_stream.length == 0
    read_ack(rds, "idle", 50)
    assert t.trim_once()[0].removed == 50 and rds.xlen(STREAM) == 0
    t.close()


def test_over_cap_raises_the_alarm_instead_of_discarding(redis_url: str, rds: redis.Redis) -> None:
    fill(rds, 600)
    rds.xgroup_create(STREAM, "stuck", id="0")
    t = Trimmer(redis_url=redis_url, streams=[STREAM], cap=500)
    r = t.trim_once()[0]
    assert r.over_cap and r.removed == 0 and rds.xlen(STREAM) == 600
    text = generate_latest(trim_registry(t)).decode()
    assert f'core_stream_over_cap{{stream="{STREAM}"}} 1.0' in text
    t.close()
    env = {"CDC_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "cdc", "trim", "--stream", STREAM]
    over = subprocess.run([*cmd, "--cap", "500"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert over.returncode == 1 and "OVER CAP" in over.stdout and "stuck" in over.stderr
    read_ack(rds, "stuck", 600)
    ok = subprocess.run([*cmd, "--cap", "500"], env=env, capture_output=True, text=True,
                        timeout=30)
    assert ok.returncode == 0 and "removed 600" in ok.stdout
