"""Chaos: the relay (a real `python -m cdc run` process) under kills, restarts, cut links,
a huge transaction and poison events. Every case ends with the same invariant check
(tests/chaosutil.check_invariants): every committed event in its stream exactly once,
in commit order per stream; slot lag back to ≈ 0; the DLQ holds only the poison events.
Each case prints its figures (shown even without -s).
"""

from __future__ import annotations

import itertools
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import redis
from pydantic import SecretStr

from cdc.settings import Settings
from devkit.localservers import LocalRedis
from tests.chaosutil import (
    BIG_LIMIT,
    Figures,
    Producer,
    TcpProxy,
    check_invariants,
    poison_ids,
    rss_kib,
)
from tests.relayutil import cdc, relay, slot_active, start_relay, wait_for

pytestmark = pytest.mark.chaos
Report = Callable[..., None]


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Report:
    """Print a case's figures straight to the terminal."""

    def emit(case: str, figures: Figures, started: float, **extra: Any) -> None:
        figs = {**extra, **asdict(figures), "seconds": round(time.monotonic() - started, 1)}
        with capsys.disabled():
            print(f"\nCHAOS {case}: " + " ".join(f"{k}={v}" for k, v in figs.items()))

    return emit


def total(rds: redis.Redis) -> int:
    return sum(int(rds.xlen(s)) for s in ("axiom:core:events", "axiom:watches", "axiom:workers"))


@pytest.mark.slow
def test_relay_sigkilled_5_times_during_100k_events(
    settings: Settings, pg_dsn: str, rds: redis.Redis, tmp_path: Path, report: Report
) -> None:
    t0 = time.monotonic()
    assert cdc(settings, "slot", "create").returncode == 0
    producer = Producer(pg_dsn, 100_000, per_tx=500, pause=0.02)
    thread = producer.start()
    rng = random.Random(20261126)
    kills, at_kill = 0, []
    for _ in range(5):
        proc = start_relay(settings, str(tmp_path / f"relay{kills}.log"))
        wait_for(lambda: slot_active(pg_dsn, settings.slot), what="the relay to hold the slot")
        before = at_kill[-1] if at_kill else 0
        # this life publishes before it dies (unless every event is already in Redis)
        wait_for(lambda b=before: total(rds) > b or b == 100_000, what="this life to publish")
        time.sleep(rng.uniform(0.05, 1.5))  # a random moment while it streams
        # The kill must land on a live relay that still holds the slot.
        assert proc.poll() is None and slot_active(pg_dsn, settings.slot), "relay not streaming"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(10) == -signal.SIGKILL
        kills += 1
        at_kill.append(total(rds))
    thread.join(120)
    assert producer.error is None and producer.done == 100_000
    with relay(settings, str(tmp_path / "relay-final.log")) as proc:
        f = check_invariants(pg_dsn, rds, settings.slot)
        assert proc.poll() is None
    # The lives published more and more, and the producer was still going at the first
    # kill: the kills landed mid-run, not on an idle, stuck or finished relay.
    assert at_kill == sorted(at_kill) and len(set(at_kill)) >= 3, at_kill
    assert all(a < b or a == 100_000 for a, b in itertools.pairwise(at_kill)), at_kill
    assert 0 < at_kill[0] < 100_000, at_kill
    report("sigkill", f, t0, kills=kills, restarts=kills,
           entries_at_kills="/".join(map(str, at_kill)))


def test_redis_restarted_with_aof_mid_run(
    settings: Settings, pg_dsn: str, tmp_path: Path, report: Report
) -> None:
    t0 = time.monotonic()
    with LocalRedis(appendonly=True) as server:
        s = settings.model_copy(update={"redis_url": SecretStr(server.url)})
        rds = redis.Redis.from_url(server.url, decode_responses=True)
        assert cdc(s, "slot", "create").returncode == 0
        producer = Producer(pg_dsn, 20_000, per_tx=200, pause=0.02)
        with relay(s, str(tmp_path / "relay.log")) as proc:
            thread = producer.start()
            wait_for(lambda: total(rds) > 3000, what="first entries")
            server.kill()  # SIGKILL: with appendfsync always, what Redis acked is on disk
            time.sleep(1)
            server.start()
            thread.join(120)
            assert producer.error is None
            f = check_invariants(pg_dsn, rds, s.slot)
            assert proc.poll() is None, "the relay rides out a Redis restart"
        rds.close()
    # AOF kept the instance token: a restart that lost nothing is not reported as a reset.
    assert "Redis lost its state" not in (tmp_path / "relay.log").read_text()
    report("redis-restart", f, t0, restarts=1)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_redis_refusing_writes_on_and_off_loses_and_duplicates_nothing(
    seed: int, settings: Settings, pg_dsn: str, rds: redis.Redis, tmp_path: Path,
    report: Report,
) -> None:
    """maxmemory flips between 1 byte and 0 while a 30k backlog drains in small batches.

    With 4 batches in flight, one can get an OOM reply while the next is accepted: the old
    publish protocol let that one raise the mark past the refused events, which a replay
    then skipped while their rows were marked PUBLISHED.
    """
    t0 = time.monotonic()
    n = 30_000
    assert cdc(settings, "slot", "create").returncode == 0
    Producer(pg_dsn, n, per_tx=500).run()  # the backlog, across the three streams
    rng = random.Random(seed)
    done = threading.Event()
    flips = [0]

    def flap() -> None:
        client = redis.Redis.from_url(settings.redis_url.get_secret_value())
        try:
            while not done.is_set():
                client.config_set("maxmemory", 1)
                flips[0] += 1
                time.sleep(rng.uniform(0.001, 0.006))
                client.config_set("maxmemory", 0)
                time.sleep(rng.uniform(0.01, 0.06))
        finally:
            client.config_set("maxmemory", 0)
            client.close()

    flapper = threading.Thread(target=flap, daemon=True)
    log = tmp_path / "relay.log"
    try:
        with relay(settings, str(log), CDC_BATCH_SIZE="20", CDC_MAX_IN_FLIGHT="4",
                   CDC_STANDBY_MAX_BACKOFF_S="0.05") as proc:
            flapper.start()
            wait_for(lambda: total(rds) >= n, timeout=150, what=f"{n} entries")
            done.set()
            flapper.join(5)
            f = check_invariants(pg_dsn, rds, settings.slot)
            assert proc.poll() is None
    finally:
        done.set()
    refused = log.read_text().count("Redis is full")
    assert refused > 0, "the fault never hit the relay"
    report(f"redis-oom-flapping-{seed}", f, t0, flips=flips[0], refusals=refused)


def test_postgres_restarted_mid_run(
    settings: Settings, pg_server: Any, pg_dsn: str, rds: redis.Redis, tmp_path: Path,
    report: Report,
) -> None:
    t0 = time.monotonic()
    assert cdc(settings, "slot", "create").returncode == 0
    producer = Producer(pg_dsn, 20_000, per_tx=200, pause=0.03)
    with relay(settings, str(tmp_path / "relay.log")) as proc:
        wait_for(lambda: slot_active(pg_dsn, settings.slot), what="the relay to hold the slot")
        thread = producer.start()
        wait_for(lambda: producer.done >= 6000, what="a run in progress")
        produced = producer.done
        pg_server.restart("immediate")  # a crash: the slot resumes from its last saved position
        thread.join(120)
        assert producer.error is None
        f = check_invariants(pg_dsn, rds, settings.slot)
        assert proc.poll() is None, "the relay rides out a PostgreSQL restart"
    assert produced < 20_000, "the restart came after the producer finished"
    report("postgres-restart", f, t0, restarts=1, produced_at_restart=produced,
           producer_retries=producer.retries)


@pytest.mark.slow
def test_links_to_redis_then_postgres_cut_and_restored(
    settings: Settings, pg_server: Any, redis_server: LocalRedis, pg_dsn: str,
    rds: redis.Redis, tmp_path: Path, report: Report,
) -> None:
    t0 = time.monotonic()
    assert cdc(settings, "slot", "create").returncode == 0
    to_redis, to_pg = TcpProxy(redis_server.port), TcpProxy(pg_server.port)
    dbname = pg_dsn.rsplit("/", 1)[1]
    s = settings.model_copy(update={
        "redis_url": SecretStr(f"redis://127.0.0.1:{to_redis.port}/0"),
        "database_url": SecretStr(f"postgresql://postgres@127.0.0.1:{to_pg.port}/{dbname}"),
    })
    producer = Producer(pg_dsn, 20_000, per_tx=200, pause=0.03)
    try:
        with relay(s, str(tmp_path / "relay.log")) as proc:
            thread = producer.start()
            wait_for(lambda: total(rds) > 2000, what="first entries")
            to_redis.cut(3)
            mark = total(rds)
            wait_for(lambda: total(rds) > mark + 2000, timeout=30, what="progress after Redis cut")
            to_pg.cut(3)
            thread.join(120)
            assert producer.error is None
            f = check_invariants(pg_dsn, rds, s.slot)
            assert proc.poll() is None, "the relay rides out cut links"
    finally:
        to_redis.close()
        to_pg.close()
    report("tcp-cut", f, t0, cuts=to_redis.cuts + to_pg.cuts - 2, restarts=0)


@pytest.mark.slow
def test_one_transaction_of_200k_rows_under_100_mib(
    settings: Settings, pg_dsn: str, rds: redis.Redis, tmp_path: Path, report: Report
) -> None:
    t0 = time.monotonic()
    assert cdc(settings, "slot", "create").returncode == 0
    peak = [0, 0]
    done = threading.Event()
    # Write-back off: this case is about memory, and the UPDATEs would triple its time.
    with relay(settings, str(tmp_path / "relay.log"), CDC_MARK_PUBLISHED="false") as proc:

        def sample() -> None:
            while not done.wait(0.02):
                try:
                    rss, hwm = rss_kib(proc.pid)
                except OSError:
                    return
                peak[0], peak[1] = max(peak[0], rss), max(peak[1], hwm)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        t_insert = time.monotonic()
        Producer(pg_dsn, 200_000, per_tx=200_000, lean=True).run()
        insert_s = time.monotonic() - t_insert
        f = check_invariants(pg_dsn, rds, settings.slot, write_back=False)
        done.set()
        sampler.join()
        assert proc.poll() is None
    rss_mib, hwm_mib = peak[0] / 1024, peak[1] / 1024
    report("200k-row-tx", f, t0, rss_peak_mib=round(rss_mib, 1), vm_hwm_mib=round(hwm_mib, 1),
           insert_seconds=round(insert_s, 1))
    assert hwm_mib < 100, f"relay peak RSS {hwm_mib:.1f} MiB"


def test_poison_events_mixed_into_a_normal_flow(
    settings: Settings, pg_dsn: str, rds: redis.Redis, tmp_path: Path, report: Report
) -> None:
    t0 = time.monotonic()
    assert cdc(settings, "slot", "create").returncode == 0
    producer = Producer(pg_dsn, 20_000, per_tx=100, poison=True, pause=0.005)
    with relay(settings, str(tmp_path / "relay.log"), CDC_MAX_EVENT_BYTES=str(BIG_LIMIT)) as proc:
        producer.run()
        poison = poison_ids(pg_dsn)
        f = check_invariants(pg_dsn, rds, settings.slot, poison=poison)
        assert proc.poll() is None
    assert len(poison) == 40
    report("poison", f, t0)
