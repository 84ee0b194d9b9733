"""Ordered consumers on partitioned routes: leases, fence, rebalance, order through faults."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from cdc.consumers.leases import fair_share
from cdc.consumers.worker import AsyncConsumer, Consumer, Entry
from cdc.ops import status
from cdc.pipeline.route import partition, partition_stream
from cdc.settings import Settings
from cdc.streams import keys
from tests.relayutil import cdc, insert_aggregates, relay_env, wait_for

ROUTE = "axiom:core:events"
PARTS = [partition_stream(ROUTE, p) for p in range(8)]


def test_fair_share_gives_each_member_its_count_and_own_partitions_first() -> None:
    members = ["c1", "c2", "c3"]
    shares = [fair_share(members, m, PARTS) for m in members]
    assert [want for want, _ in shares] == [3, 3, 2]
    assert shares[1][1][:3] == [PARTS[1], PARTS[4], PARTS[7]]
    assert sorted(shares[0][1]) == sorted(PARTS)  # every partition, to take free ones
    assert fair_share([], "solo", PARTS)[0] == 8
    assert fair_share([f"c{i}" for i in range(10)], "c9", PARTS)[0] == 0


def _first_handlings(seen: list[tuple[str, str, str, int]]) -> dict[str, list[int]]:
    """Return each aggregate's event seqs in the order they were first handled."""
    per_agg: dict[str, list[int]] = defaultdict(list)
    done: set[int] = set()
    for _, _, agg, seq in seen:
        if seq not in done:
            done.add(seq)
            per_agg[agg].append(seq)
    return per_agg


def _consumer(url: str, name: str, handler: Any, **kw: Any) -> Consumer:
    opts: dict[str, Any] = {"count": 50, "block_ms": 100, "claim_idle_ms": 200,
                            "start_id": "0", "lease_ms": 1000, **kw}
    return Consumer(redis_url=url, group="g", streams=[ROUTE], handler=handler, consumer=name,
                    ordered=True, **opts)


def test_a_consumer_that_outlives_its_lease_is_fenced(redis_url: str, rds: redis.Redis) -> None:
    rds.set(keys.partitions(ROUTE), 1)  # as the relay records it: one partition, the stream
    for i in range(10):
        rds.xadd(ROUTE, {"event_id": f"ev-{i}", "aggregate_id": "a", "payload": "{}"})
    by_a: list[str] = []
    by_b: list[tuple[str, str]] = []

    def slow(e: Entry) -> None:  # stalls past its 300 ms lease on the first entry
        by_a.append(e.event_id)
        time.sleep(0.8)

    a = _consumer(redis_url, "a", slow, lease_ms=300)
    b = _consumer(redis_url, "b", lambda e: by_b.append((e.event_id, e.fence)), lease_ms=300)
    ta = threading.Thread(target=a.run, kwargs={"timeout": 2.5})
    ta.start()
    wait_for(lambda: bool(by_a), what="a handling its first entry")
    lease_a = rds.get(keys.lease(ROUTE, "g"))
    tb = threading.Thread(target=b.run, kwargs={"timeout": 3})
    tb.start()
    ta.join(10)
    tb.join(10)
    a.close()
    b.close()
    assert by_a == ["ev-0"], "a ran nothing after its lease lapsed"
    assert (a.stats.acked, a.stats.fenced, a.stats.leases_lost) == (0, 1, 1)
    assert by_b == [(f"ev-{i}", "b 2") for i in range(10)], "b finished a's pending, in order"
    assert b.stats.claimed == 10 and b.stats.acked == 10 and lease_a == "a 1"
    assert rds.xpending(ROUTE, "g")["pending"] == 0


def test_a_failing_entry_holds_its_partition_until_dead_lettered(
    redis_url: str, rds: redis.Redis
) -> None:
    rds.set(keys.partitions(ROUTE), 1)
    for i in range(10):
        rds.xadd(ROUTE, {"event_id": f"ev-{i}", "aggregate_id": "a", "payload": "{}"})
    attempts: list[str] = []

    def handler(e: Entry) -> None:
        attempts.append(e.event_id)
        if e.event_id == "ev-3":
            raise ValueError("cannot handle ev-3")

    c = _consumer(redis_url, "c", handler, claim_idle_ms=100, max_deliveries=2)
    stats = c.run(limit=10, timeout=10)
    c.close()
    assert attempts == [f"ev-{i}" for i in (0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9)]
    assert (stats.failed, stats.dead_lettered, stats.acked) == (2, 1, 10)
    dead = rds.xrange(keys.DLQ)
    assert [f["event_id"] for _, f in dead] == ["ev-3"] and "cannot handle" in dead[0][1]["error"]
    assert rds.xpending(ROUTE, "g")["pending"] == 0


def _one_partition(rds: redis.Redis, n: int) -> None:
    rds.set(keys.partitions(ROUTE), 1)
    for i in range(n):
        rds.xadd(ROUTE, {"event_id": f"ev-{i}", "aggregate_id": "a", "payload": "{}"})


def _owner_in_turn(redis_url: str, name: str, fail_on: str = "", **kw: Any) -> list[str]:
    """Run one owner of the partition that stops after its first handler call."""
    stop = threading.Event()
    calls: list[str] = []

    def handler(e: Entry) -> None:
        calls.append(f"{e.event_id}@{e.deliveries}")
        stop.set()
        if e.event_id == fail_on:
            raise ValueError(f"cannot handle {fail_on}")

    c = _consumer(redis_url, name, handler, stop=stop, **kw)
    c.run(timeout=10)
    c.close()
    return calls


def test_handovers_do_not_spend_the_failure_budget(redis_url: str, rds: redis.Redis) -> None:
    """Six owners in turn each claim what the last left pending: six deliveries, no failure."""
    _one_partition(rds, 8)
    calls = [x for k in range(6) for x in _owner_in_turn(redis_url, f"o{k}", max_deliveries=2)]
    assert calls == [f"ev-{k}@{k + 1}" for k in range(6)], "each handover delivered again"
    rest: list[str] = []
    c = _consumer(redis_url, "last", lambda e: rest.append(e.event_id), max_deliveries=2)
    stats = c.run(limit=2, timeout=10)
    c.close()
    assert rest == ["ev-6", "ev-7"] and stats.dead_lettered == 0
    assert rds.xlen(keys.DLQ) == 0 and rds.xpending(ROUTE, "g")["pending"] == 0


def test_handler_failures_count_across_owners(redis_url: str, rds: redis.Redis) -> None:
    """Failed under one owner, then the next: the third dead-letters it without a third try."""
    _one_partition(rds, 3)
    calls = [x for k in range(3)
             for x in _owner_in_turn(redis_url, f"o{k}", "ev-0", max_deliveries=2)]
    assert calls == ["ev-0@1", "ev-0@2", "ev-1@3"]  # ev-1 came in every batch
    dead = rds.xrange(keys.DLQ)
    assert [f["event_id"] for _, f in dead] == ["ev-0"]
    assert dead[0][1]["failures"] == "2" and "failed 2 times" in dead[0][1]["error"]
    assert "ValueError: cannot handle ev-0" in dead[0][1]["error"], "the last owner's error"
    assert not rds.exists(keys.failures(ROUTE, "g")), "forgotten once acked"


class _LosesLeaseAfterDlqAdd(Consumer):
    """A consumer whose lease lapses right after its first write to the DLQ stream."""

    fired = False

    def _execute(self, todo: Any) -> Any:
        reply = super()._execute(todo)
        if not self.fired and keys.DLQ in getattr(todo, "args", ()):
            self.fired = True
            assert self._r is not None
            self._r.delete(keys.lease(ROUTE, "g"))
        return reply


def test_a_dead_letter_whose_ack_is_fenced_lands_in_the_dlq_once(
    redis_url: str, rds: redis.Redis
) -> None:
    _one_partition(rds, 5)

    def handler(e: Entry) -> None:
        if e.event_id == "ev-1":
            raise ValueError("cannot handle ev-1")

    c = _LosesLeaseAfterDlqAdd(redis_url=redis_url, group="g", streams=[ROUTE],
                               handler=handler, consumer="c", count=50, block_ms=100,
                               claim_idle_ms=100, start_id="0", ordered=True, lease_ms=600,
                               max_deliveries=1)
    stats = c.run(limit=5, timeout=15)
    c.close()
    assert c.fired and stats.fenced == 1, "the ack after the DLQ add was refused"
    assert [f["event_id"] for _, f in rds.xrange(keys.DLQ)] == ["ev-1"], "added once"
    assert (stats.dead_lettered, stats.acked) == (1, 5)
    assert rds.xpending(ROUTE, "g")["pending"] == 0


def test_relay_partitions_feed_ordered_consumers_and_status_names_owners(
    settings: Settings, pg_dsn: str, rds: redis.Redis
) -> None:
    routes = "*=axiom:core:events/8"
    assert cdc(settings, "slot", "create").returncode == 0
    insert_aggregates(pg_dsn)  # 2000 events of 50 aggregates, in four transactions
    res = cdc(settings, "run", "--once", CDC_ROUTES=routes)
    assert res.returncode == 0, res.stderr
    url = settings.redis_url.get_secret_value()
    seen: list[tuple[str, str, str, int]] = []
    stop = threading.Event()
    cs = [_consumer(url, name, lambda e, n=name: seen.append(  # type: ignore[misc]
        (n, e.stream, e.fields["aggregate_id"], orjson.loads(e.fields["payload"])["seq"])),
        stop=stop) for name in ("c1", "c2")]
    threads = [threading.Thread(target=c.run) for c in cs]
    for t in threads:
        t.start()
    wait_for(lambda: len({x[3] for x in seen}) >= 2000
             and all(len(c.leases.owned) == 4 for c in cs if c.leases),
             what="2000 handled, 4 + 4 owned")
    text = status.render(status.snapshot(settings.model_copy(update={"routes": routes})))
    stop.set()
    for t in threads:
        t.join(10)
    for c in cs:
        c.close()
    per_agg = _first_handlings(seen)
    assert sum(len(x) for x in per_agg.values()) == 2000
    assert all(seqs == sorted(seqs) for seqs in per_agg.values()) and len(per_agg) == 50
    for _, stream, agg, _ in seen:
        assert stream == partition_stream(ROUTE, partition("t1", agg, 8))
    lines = [x for x in text.splitlines() if x.strip().startswith("g ")]
    assert len(lines) == 8 and all("owner c" in x and ", epoch " in x for x in lines), text
    assert not rds.exists(*[keys.lease(s, "g") for s in PARTS]), "close() released them"
    done = subprocess.run(
        [sys.executable, "-m", "cdc", "consume", "--stream", ROUTE, "--group", "ops",
         "--ordered", "--from-start", "--quiet", "--count", "2000", "--timeout", "30",
         "--lease-ms", "1000"],
        env=relay_env(settings), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "acked=2000" in done.stderr and "leases_acquired=8" in done.stderr


def test_async_ordered_consumers_share_partitions_and_keep_order(
    redis_url: str, rds: redis.Redis
) -> None:
    rds.set(keys.partitions(ROUTE), 8)
    for i in range(1600):  # 40 aggregates, 40 events each
        agg = f"case-{i % 40}"
        rds.xadd(partition_stream(ROUTE, partition("t1", agg, 8)),
                 {"event_id": f"ev-{i}", "aggregate_id": agg, "payload": f'{{"seq": {i}}}'})
    seen: list[tuple[str, str, str, int]] = []

    async def main() -> list[int]:
        async def handler(e: Entry) -> None:
            await asyncio.sleep(0)
            seen.append((e.fence.split(" ")[0], e.stream, e.fields["aggregate_id"],
                         orjson.loads(e.fields["payload"])["seq"]))

        cs = [AsyncConsumer(redis_url=redis_url, group="g", streams=[ROUTE], handler=handler,
                            consumer=f"a{k}", count=20, block_ms=100, start_id="0",
                            ordered=True, lease_ms=1000) for k in range(2)]
        tasks = [asyncio.create_task(c.run()) for c in cs]
        while len({x[3] for x in seen}) < 1600 or any(
                len(c.leases.owned) != 4 for c in cs if c.leases):
            await asyncio.sleep(0.05)
        for c in cs:
            c.stop.set()
        await asyncio.gather(*tasks)
        for c in cs:
            await c.aclose()
        return [c.stats.acked for c in cs]

    acked = asyncio.run(asyncio.wait_for(main(), 30))
    per_agg = _first_handlings(seen)
    assert sum(acked) >= 1600 and sum(len(x) for x in per_agg.values()) == 1600
    assert all(seqs == sorted(seqs) for seqs in per_agg.values())
    assert {who for who, _, _, _ in seen} <= {"a0", "a1"}


# -- 50k events, 4 processes, one SIGKILLed and one SIGSTOPped past its lease -------------

EVENTS, AGGREGATES, LEASE_MS = 50_000, 500, 1000


def _fill(rds: redis.Redis) -> None:
    """XADD relay-shaped entries to the 8 partitions as the relay routes them (checked above)."""
    rds.set(keys.partitions(ROUTE), 8)
    pipe = rds.pipeline(transaction=False)
    for i in range(EVENTS):
        agg, seq = f"case-{i % AGGREGATES}", i // AGGREGATES
        pipe.xadd(partition_stream(ROUTE, partition("t1", agg, 8)), {
            "event_id": f"ev-{i}", "event_type": "CASE_STATUS_CHANGED", "aggregate_type": "case",
            "aggregate_id": agg, "tenant_id": "t1",
            "payload": orjson.dumps({"case_id": agg, "seq": seq}).decode(),
        })
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def _check_order(rows: list[list[Any]]) -> tuple[int, int, int]:
    """Return (first handlings, redeliveries, order violations) over every aggregate."""
    by_agg: dict[str, list[list[Any]]] = defaultdict(list)
    for row in rows:
        by_agg[row[3]].append(row)
    first = redelivered = violations = 0
    for agg_rows in by_agg.values():
        nxt = 0
        for row in sorted(agg_rows, key=lambda r: r[6]):
            if row[4] < nxt:
                redelivered += 1
            elif row[4] == nxt:
                first, nxt = first + 1, nxt + 1
            else:
                violations += 1
    return first, redelivered, violations


def _max_concurrent_owners(rows: list[list[Any]]) -> tuple[int, int]:
    """Return (max owners at once of one partition, tenures): a tenure is one lease token."""
    spans: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for row in rows:
        span = spans[row[1]].setdefault(row[5], [row[6], row[6]])
        span[0], span[1] = min(span[0], row[6]), max(span[1], row[6])
    worst = tenures = 0
    for by_token in spans.values():
        tenures += len(by_token)
        edges = sorted([(a, 1) for a, _ in by_token.values()]
                       + [(b, -1) for _, b in by_token.values()], key=lambda e: (e[0], -e[1]))
        now = 0
        for _, d in edges:
            now += d
            worst = max(worst, now)
        epochs = [int(tok.rsplit(" ", 1)[1]) for tok, _ in
                  sorted(by_token.items(), key=lambda kv: kv[1][0])]
        assert epochs == sorted(epochs), "a later tenure had an older epoch"
    return worst, tenures


@pytest.mark.slow
def test_ordered_consumers_keep_aggregate_order_through_kill_and_pause(
    redis_url: str, rds: redis.Redis, tmp_path: Path
) -> None:
    _fill(rds)
    procs = {}
    for k in range(4):
        name = f"w{k}"
        procs[name] = subprocess.Popen(
            [sys.executable, "-m", "tests.ordered_worker", redis_url, "g", name,
             str(tmp_path / f"{name}.json"), str(LEASE_MS), "0.0004"],
            cwd=Path(__file__).resolve().parent.parent)
    t0 = time.monotonic()
    try:
        wait_for(lambda: rds.llen("rec:handled") >= 8_000, what="a sixth handled")
        procs["w0"].send_signal(signal.SIGKILL)
        procs["w0"].wait(10)
        wait_for(lambda: rds.llen("rec:handled") >= 16_000, what="a third handled")
        procs["w1"].send_signal(signal.SIGSTOP)
        time.sleep(LEASE_MS / 1000 * 2.5)  # its leases and membership lapse
        procs["w1"].send_signal(signal.SIGCONT)

        def drained() -> bool:
            return all(rds.xpending(s, "g")["pending"] == 0
                       and rds.xinfo_groups(s)[0]["lag"] == 0 for s in PARTS)

        wait_for(drained, timeout=45, what="every partition drained")
        owners = defaultdict(int)

        def rebalanced() -> bool:  # w1, w2, w3 live: 3 + 3 + 2
            owners.clear()
            for s in PARTS:
                token = rds.get(keys.lease(s, "g"))
                owners[str(token).split(" ")[0]] += 1
            return sorted(owners.values()) == [2, 3, 3]

        wait_for(rebalanced, timeout=10, what="the three live consumers to share 3/3/2")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in procs.values():
            p.wait(15)
    took = time.monotonic() - t0
    rows = [orjson.loads(x) for x in rds.lrange("rec:handled", 0, -1)]
    stale = [orjson.loads(x) for x in rds.lrange("rec:stale", 0, -1)]
    stats = {n: orjson.loads((tmp_path / f"{n}.json").read_bytes()) for n in ("w1", "w2", "w3")}
    first, redelivered, violations = _check_order(rows)
    worst, tenures = _max_concurrent_owners(rows)
    handled_by = {n: sum(1 for r in rows if r[0] == n) for n in procs}
    print(f"\nordered: {len(rows)} handlings in {took:.1f} s, first {first},"
          f" redelivered {redelivered}, order violations {violations}, max owners at once"
          f" {worst}, tenures {tenures}, stale handler calls {len(stale)}, by consumer"
          f" {handled_by}; w1 after SIGCONT: {stats['w1']}")
    assert violations == 0
    assert first == EVENTS, "every event handled"
    assert len({(r[1], r[2]) for r in rows}) == EVENTS
    assert worst == 1, "no partition had two owners at once"
    assert len(stale) <= 1, "at most w1's one handler call in flight when it was stopped"
    assert handled_by["w0"] > 0 and all(handled_by[n] > 0 for n in ("w2", "w3"))
    assert stats["w1"]["leases_lost"] >= 1, "w1 lost its partitions while stopped"
    assert tenures > 8, "partitions changed hands"
