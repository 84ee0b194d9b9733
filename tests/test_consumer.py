"""The consumer-group worker against a real Redis: ack, reclaim, dead-letter, dedup, stop."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import redis
from prometheus_client import generate_latest

from cdc.consumers.examples import SynapseMiner, WatchCep, run_example
from cdc.consumers.worker import Consumer, Entry, consumer_registry
from cdc.streams import keys
from tests.relayutil import wait_for

STREAM = "axiom:core:events"


def fill(rds: redis.Redis, n: int, *, stream: str = STREAM, start: int = 0) -> list[str]:
    """Add n entries shaped like the relay's; return their event ids."""
    pipe = rds.pipeline(transaction=False)
    ids = [f"ev-{i}" for i in range(start, start + n)]
    for i, eid in enumerate(ids, start):
        pipe.xadd(stream, {
            "event_id": eid, "event_type": "CASE_CREATED", "aggregate_type": "case",
            "aggregate_id": f"c{i % 7}", "tenant_id": "t1",
            "payload": orjson.dumps({"case_id": f"c{i}", "seq": i}).decode(),
        })
    pipe.execute()
    return ids


def pending(rds: redis.Redis, group: str, stream: str = STREAM) -> int:
    return int(rds.xpending(stream, group)["pending"])


def test_handles_and_acks_every_entry_in_order(redis_url: str, rds: redis.Redis) -> None:
    ids = fill(rds, 250)
    seen: list[str] = []
    c = Consumer(redis_url=redis_url, group="g", streams=[STREAM], start_id="0",
                 handler=lambda e: seen.append(e.event_id), count=40)
    stats = c.run(limit=250, timeout=20)
    c.close()
    assert seen == ids
    assert (stats.handled, stats.acked, stats.failed) == (250, 250, 0)
    assert pending(rds, "g") == 0
    text = generate_latest(consumer_registry([c])).decode()
    assert 'core_consumer_acked_total{consumer="' in text and "} 250.0" in text


def test_consumer_killed_mid_batch_is_taken_over_by_another(
    redis_url: str, rds: redis.Redis, tmp_path: Path
) -> None:
    ids = fill(rds, 200)
    log = tmp_path / "c1.handled"
    script = (
        "import sys, time\n"
        "from cdc.consumers.worker import Consumer\n"
        "def h(e):\n"
        f"    open({str(log)!r}, 'a').write(e.event_id + '\\n'); time.sleep(0.02)\n"
        f"Consumer(redis_url={redis_url!r}, group='g', streams=[{STREAM!r}], handler=h,\n"
        "         consumer='c1', count=50, start_id='0', claim_idle_ms=60000).run()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_for(lambda: log.exists() and len(log.read_text().split()) >= 10,
                 what="c1 to be mid-batch")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    by_c1 = log.read_text().split()
    assert 10 <= len(by_c1) < 50
    assert pending(rds, "g") == 50, "c1's whole batch is delivered and unacked"
    by_c2: list[str] = []
    c2 = Consumer(redis_url=redis_url, group="g", streams=[STREAM], consumer="c2",
                  handler=lambda e: by_c2.append(e.event_id), claim_idle_ms=300, block_ms=100)
    stats = c2.run(limit=200, timeout=20)
    c2.close()
    assert stats.claimed == 50 and stats.acked == 200
    assert sorted(by_c2) == sorted(ids), "c2 handled every entry, c1's pending ones included"
    assert pending(rds, "g") == 0


def test_failing_entry_is_retried_then_dead_lettered_with_reason(
    redis_url: str, rds: redis.Redis
) -> None:
    ids = fill(rds, 20)
    attempts: dict[str, int] = {}

    def handler(e: Entry) -> None:
        attempts[e.event_id] = attempts.get(e.event_id, 0) + 1
        if e.event_id == "ev-7":
            raise ValueError("cannot handle ev-7")

    c = Consumer(redis_url=redis_url, group="g", streams=[STREAM], start_id="0",
                 handler=handler, claim_idle_ms=100, block_ms=50, max_deliveries=3)
    stats = c.run(limit=20, timeout=20)
    c.close()
    assert attempts["ev-7"] == 3 and all(attempts[i] == 1 for i in ids if i != "ev-7")
    assert (stats.dead_lettered, stats.failed, stats.acked) == (1, 3, 20)
    dlq = rds.xrange("axiom:dlq:events")
    assert len(dlq) == 1
    dead = dlq[0][1]
    assert dead["event_id"] == "ev-7" and dead["original_stream"] == STREAM
    assert dead["consumer_group"] == "g" and dead["deliveries"] == "4"
    assert "delivered 4 times" in dead["error"] and "cannot handle ev-7" in dead["error"]
    assert pending(rds, "g") == 0


def test_dedup_skips_event_ids_the_group_already_handled(
    redis_url: str, rds: redis.Redis
) -> None:
    fill(rds, 10)
    fill(rds, 5, start=3)  # ev-3..ev-7 republished
    seen: list[str] = []
    c = Consumer(redis_url=redis_url, group="g", streams=[STREAM], start_id="0", dedup=True,
                 handler=lambda e: seen.append(e.event_id), count=4)
    stats = c.run(limit=15, timeout=20)
    c.close()
    assert seen == [f"ev-{i}" for i in range(10)]
    assert stats.duplicates == 5 and stats.acked == 15
    assert rds.zcard(keys.consumer_seen(STREAM, "g")) == 10


def test_stop_event_ends_a_blocking_consumer_quickly(redis_url: str) -> None:
    stop = threading.Event()
    c = Consumer(redis_url=redis_url, group="g", streams=[STREAM], handler=lambda e: None,
                 block_ms=200, stop=stop)
    t = threading.Thread(target=c.run)
    t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    stop.set()
    t.join(5)
    c.close()
    assert not t.is_alive() and time.monotonic() - t0 < 1


def test_cdc_consume_prints_entries_and_honours_count_and_timeout(
    redis_url: str, rds: redis.Redis
) -> None:
    fill(rds, 3)
    env = {"CDC_REDIS_URL": redis_url, "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "cdc", "consume", "--stream", STREAM, "--group", "ops",
           "--from-start", "--json", "--timeout", "10"]
    done = subprocess.run([*cmd, "--count", "3"], env=env, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    lines = [orjson.loads(x) for x in done.stdout.splitlines()]
    assert [x["event_id"] for x in lines] == ["ev-0", "ev-1", "ev-2"]
    assert "acked=3" in done.stderr
    short = subprocess.run([*cmd[:-1], "1", "--count", "5"], env=env, capture_output=True,
                           text=True, timeout=30)
    assert short.returncode == 1 and short.stdout == ""


def test_example_consumers_for_both_groups(redis_url: str, rds: redis.Redis) -> None:
    for i in range(4):
        rds.xadd("axiom:watches", {
            "event_id": f"w{i}", "event_type": "WATCH_ALERT_TRIGGERED", "aggregate_id": "w1",
            "tenant_id": "t1",
            "payload": orjson.dumps({"watch_id": "w1", "alert_id": f"a{i}",
                                     "severity": "HIGH"}).decode(),
        })
    fill(rds, 6)
    for group, stream in (("watch_cep_group", "axiom:watches"), ("synapse_group", STREAM)):
        rds.xgroup_create(stream, group, id="0")
    lines: list[str] = []
    cep, miner = WatchCep(burst=3), SynapseMiner()
    stop = threading.Event()
    a = run_example("watch_cep_group", "axiom:watches", redis_url=redis_url, stop=stop,
                    on_entry=lambda e, line: lines.append(line), limit=4, timeout=10,
                    analyzer=cep)
    b = run_example("synapse_group", STREAM, redis_url=redis_url, stop=stop,
                    on_entry=lambda e, line: lines.append(line), limit=6, timeout=10,
                    analyzer=miner)
    assert (a.acked, b.acked) == (4, 6)
    assert cep.bursts == ["w1"] and any("BURST" in x for x in lines)
    assert miner.traces[("t1", "c0")] == ["CASE_CREATED"] and len(miner.traces) == 6


def test_consumer_rides_out_a_redis_restart() -> None:
    from devkit.localservers import LocalRedis

    with LocalRedis(appendonly=True) as server:
        rds = redis.Redis.from_url(server.url, decode_responses=True)
        ids = fill(rds, 500)
        seen: list[str] = []
        stop = threading.Event()

        def slow(e: Entry) -> None:
            seen.append(e.event_id)
            time.sleep(0.002)

        c = Consumer(redis_url=server.url, group="g", streams=[STREAM], start_id="0",
                     handler=slow, dedup=True, claim_idle_ms=300, block_ms=100, stop=stop)
        t = threading.Thread(target=c.run)
        t.start()
        wait_for(lambda: len(seen) > 100, what="consumer under way")
        server.kill()
        time.sleep(1)
        server.start()
        ids += fill(rds, 500, start=500)
        wait_for(lambda: c.stats.acked >= 1000 and pending(rds, "g") == 0, timeout=20,
                 what="every entry acked after the restart")
        stop.set()
        t.join(5)
        c.close()
        rds.close()
    assert set(seen) == set(ids) and c.stats.redis_errors > 0


def test_dedup_state_of_the_format_before_is_migrated_on_first_start(
    redis_url: str, rds: redis.Redis
) -> None:
    """Ids the old consumer recorded in its one set per group are not handled again."""
    fill(rds, 10)
    now = time.time()
    old = keys.consumer_seen_v1("g")
    rds.zadd(old, {f"ev-{i}": now - 60 for i in range(5)})  # handled by the old consumer
    rds.zadd(old, {"ev-8": now - 200_000})  # older than dedup_ttl_s: forgotten
    seen: list[str] = []
    c = Consumer(redis_url=redis_url, group="g", streams=[STREAM], start_id="0", dedup=True,
                 handler=lambda e: seen.append(e.event_id), count=4)
    stats = c.run(limit=10, timeout=20)
    c.close()
    assert seen == [f"ev-{i}" for i in range(5, 10)]
    assert (stats.duplicates, stats.handled, stats.acked) == (5, 5, 10)
    assert rds.get(keys.consumer_seen_format(STREAM, "g")) == keys.CONSUMER_SEEN_FORMAT
    assert rds.zcard(keys.consumer_seen(STREAM, "g")) == 10
    assert 0 < rds.ttl(old) <= 86_400, "the old set expires once its ids would have"
