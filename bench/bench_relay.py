"""Relay benchmarks, all in one run on throwaway local servers (issue 3).

1. Drain a backlog: the same WAL read by (a) a bare slot reader with no sink, (b) the relay
   with write-back off, (c) with write-back on; relay CPU per event and peak RSS. Repeated
   `--rounds` times on a fresh backlog; medians reported.
2. Steady 1000 events/s: commit → entry readable by a separate XREAD BLOCK client, p50/p99,
   write-back off and on.
3. The seed's polling relay as a reference, same machine, same run.

    .venv/bin/python -m bench.bench_relay [--events 200000] [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg
import redis

from bench import polling_reference
from cdc.pg import migrate, slots
from cdc.pipeline.source import ReplicationStream
from cdc.settings import SQL_DIR, Settings
from devkit.localservers import LocalPostgres, LocalRedis

INSERT = (
    "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)"
    " SELECT 'tenant-1', 'case', 'case-' || g, 'CASE_CREATED', jsonb_build_object('case_id',"
    " 'case-' || g, 'status', 'OPEN', 'idempotency_key', %s || g) FROM generate_series(1, %s) g"
)


CORES = os.cpu_count() or 1


def backlog(dsn: str, n: int, tag: str) -> None:
    """Commit `n` outbox rows in transactions of 1000."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for i in range(0, n, 1000):
            conn.execute(INSERT, (f"{tag}-{i}-", min(1000, n - i)))


def raw_read(dsn: str, slot: str, n: int) -> float:
    """Read `n` inserts from the slot with no sink; return events/s."""
    stream = ReplicationStream(dsn, slot=slot, table="public.event_outbox")
    seen = 0
    t0 = time.perf_counter()
    while seen < n:
        msg = stream.read()
        if msg is None:
            stream.wait(1.0)
        elif isinstance(msg, memoryview) and bytes(msg[:14]) == b'{"action":"I",':
            seen += 1
    rate = n / (time.perf_counter() - t0)
    stream.close()
    return rate


def relay_env(
    dsn: str, redis_url: str, slot: str, mark: bool, extra: dict[str, str] | None = None
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        CDC_DATABASE_URL=dsn,
        CDC_REDIS_URL=redis_url,
        CDC_SLOT=slot,
        CDC_MARK_PUBLISHED=str(mark).lower(),
        CDC_BACKFILL="false",
        CDC_STREAM_MAXLEN="0",
    )
    env.update(extra or {})
    return env


def cpu_ticks() -> tuple[int, int]:
    """Return (all, stolen) CPU ticks of this machine so far (Linux /proc/stat).

    On a VM, "steal" is time the host gave our virtual CPUs to someone else: a round
    with much of it measured a slower machine, so each round reports its share.
    """
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[:8]), fields[7]


def steal_share(before: tuple[int, int]) -> float:
    """Return the share of CPU time stolen since `before` (a cpu_ticks() reading)."""
    total, stolen = cpu_ticks()
    return (stolen - before[1]) / max(1, total - before[0])


def wait_released(dsn: str, slot: str) -> None:
    """Wait until no walsender holds `slot`: its CPU time is then the postmaster's cutime."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 10
        while (st := slots.status(conn, slot)) is None or st.active:
            if time.monotonic() > deadline:
                raise SystemExit(f"slot {slot} still active 10 s after its reader closed")
            time.sleep(0.01)


class ServerCpu:
    """CPU seconds used so far by the throwaway PostgreSQL and Redis.

    PostgreSQL: the postmaster, its live children (from /proc), and its exited children
    (walsenders and backends that closed: the kernel adds their time to the postmaster's
    cutime/cstime when it reaps them). Redis: its INFO cpu.
    """

    def __init__(self, pg: LocalPostgres, redis_url: str) -> None:
        self._pidfile = pg.datadir / "postmaster.pid"
        self._redis = redis.Redis.from_url(redis_url)

    def pg(self) -> float:
        pm = int(self._pidfile.read_text().split()[0])
        while True:
            own, reaped = _cpu_seconds(pm)
            total = own + reaped
            for child in Path(f"/proc/{pm}/task/{pm}/children").read_text().split():
                # One that exited since has its time in the postmaster's cutime now.
                with contextlib.suppress(OSError):
                    total += _cpu_seconds(int(child))[0]
            if _cpu_seconds(pm)[1] == reaped:  # else one was reaped between the reads
                return total

    def redis(self) -> float:
        info = self._redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def close(self) -> None:
        self._redis.close()


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """Return (user + system CPU seconds of a process, the same of its reaped children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def run_once(
    dsn: str, redis_url: str, slot: str, mark: bool, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run `cdc run --once`; return its exit code, wall seconds, and the seconds and CPU
    seconds spent streaming (from its "streaming slot" log line to its exit), peak RSS."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run", "--once"],
        env=relay_env(dsn, redis_url, slot, mark, extra),
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    streaming_at, cpu_at = t0, 0.0
    for line in proc.stderr:  # the relay logs little: a few lines, then EOF at exit
        if b"streaming slot" in line:
            streaming_at, cpu_at = time.perf_counter(), _cpu_seconds(proc.pid)[0]
    _, status, usage = os.wait4(proc.pid, 0)
    end = time.perf_counter()
    return {
        "code": os.waitstatus_to_exitcode(status),
        "wall": end - t0,
        "streaming": end - streaming_at,
        "cpu_streaming": usage.ru_utime + usage.ru_stime - cpu_at,
        "cpu_startup": cpu_at,
        "rss_mib": usage.ru_maxrss / 1024,
    }


def relay_drain(
    dsn: str, redis_url: str, slot: str, n: int, mark: bool, cpu: ServerCpu
) -> dict[str, float]:
    """Drain the backlog with `cdc run --once`; return rates, CPU µs/event and peak RSS.

    `rate` and `cpu_us` count from the moment the relay streams (like the bare read, which
    starts its clock after START_REPLICATION); `rate_with_startup` counts from process start.
    `pg_us` and `redis_us` are the servers' CPU per event over the whole run; `cap` is the
    rate at which the three together would keep every core busy.
    """
    r = redis.Redis.from_url(redis_url)
    r.flushall()
    pg0, rd0 = cpu.pg(), cpu.redis()
    run = run_once(dsn, redis_url, slot, mark)
    wait_released(dsn, slot)
    pg_us, redis_us = (cpu.pg() - pg0) * 1e6 / n, (cpu.redis() - rd0) * 1e6 / n
    got = int(r.xlen("axiom:core:events"))
    r.close()
    if run["code"] != 0 or got != n:
        raise SystemExit(f"relay drain failed: exit {run['code']}, {got}/{n} entries")
    cpu_us = run["cpu_streaming"] * 1e6 / n
    total_us = cpu_us + pg_us + redis_us  # what the three processes cost an event together
    return {
        "rate": n / run["streaming"],
        "rate_with_startup": n / run["wall"],
        "wall": run["wall"],
        "cpu_us": cpu_us,
        "pg_us": pg_us,
        "redis_us": redis_us,
        "total_us": total_us,
        "cap": CORES * 1e6 / total_us,  # the drain rate CORES busy cores would allow
        "startup_cpu_s": run["cpu_startup"],
        "rss_mib": run["rss_mib"],
    }


def latency(
    dsn: str, redis_url: str, seconds: float, rate: int, start_consumer: Any
) -> list[float]:
    """Commit one event per transaction at `rate`/s; return commit → XREAD latencies (ms).

    The reader is a separate process (bench/latency_reader.py), so it never waits for
    this process's GIL; both sides stamp time.time() on the same host clock.
    """
    r = redis.Redis.from_url(redis_url)
    r.delete("axiom:core:events")
    r.close()
    total = int(seconds * rate)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        reader = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.latency_reader",
                redis_url,
                "axiom:core:events",
                str(total),
                out.name,
            ],
            stdout=subprocess.PIPE,
        )
        assert reader.stdout is not None
        reader.stdout.readline()  # "ready"
        handle = start_consumer()
        time.sleep(1.0)
        committed: dict[int, float] = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            t0 = time.perf_counter()
            for seq in range(total):
                delay = t0 + seq / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                conn.execute(
                    "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id,"
                    " event_type, payload) VALUES ('t', 'case', 'c', 'CASE_CREATED', %s)",
                    (orjson.dumps({"case_id": "c", "status": "OPEN", "seq": seq}).decode(),),
                )
                committed[seq] = time.time()
        reader.wait(120)
        handle()
        read_at = {int(k): v for k, v in orjson.loads(Path(out.name).read_bytes()).items()}
    if len(read_at) < total:
        raise SystemExit(f"latency run lost events: {len(read_at)}/{total}")
    return [(read_at[s] - committed[s]) * 1000 for s in range(total)]


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=1000)[int(p * 10) - 1] if len(values) > 1 else values[0]


def start_relay(
    dsn: str, redis_url: str, slot: str, mark: bool, extra: dict[str, str] | None = None
) -> Any:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cdc", "run"],
        env=relay_env(dsn, redis_url, slot, mark, extra),
        stderr=subprocess.DEVNULL,
    )

    def stop() -> None:
        proc.terminate()
        proc.wait(10)

    return stop


def start_poller(dsn: str, redis_url: str) -> Any:
    stop = threading.Event()
    th = threading.Thread(target=polling_reference.run, args=(dsn, redis_url, stop))
    th.start()

    def halt() -> None:
        stop.set()
        th.join()

    return halt


def drain_round(
    dsn: str, redis_url: str, base: Settings, n: int, no: int, cpu: ServerCpu
) -> dict[str, Any]:
    """Commit a backlog of `n`, read it bare, then drain it with write-back off and on.

    Each drain's ratio is to the bare read of the same round; the machine's speed drifts
    between rounds (a shared 2-core VM), so main() reports medians over rounds.
    """
    names = {"raw": f"bench_raw_{no}", "off": f"bench_off_{no}", "on": f"bench_on_{no}"}
    ticks = cpu_ticks()
    for slot in names.values():
        slots.create(base.model_copy(update={"slot": slot}))
    t0 = time.perf_counter()
    backlog(dsn, n, f"b{no}")
    took = time.perf_counter() - t0
    print(f"round {no + 1}: backlog of {n} committed in {took:.1f}s", flush=True)
    pg0, self0 = cpu.pg(), time.process_time()
    raw = raw_read(dsn, names["raw"], n)
    wait_released(dsn, names["raw"])
    raw_pg_us = (cpu.pg() - pg0) * 1e6 / n
    raw_reader_us = (time.process_time() - self0) * 1e6 / n
    print(
        f"  bare slot read (no sink): {raw:,.0f} events/s; CPU per event: PostgreSQL"
        f" (the walsender) {raw_pg_us:.1f} us, the reader {raw_reader_us:.1f} us",
        flush=True,
    )
    result: dict[str, Any] = {"raw": raw, "raw_pg_us": raw_pg_us}
    for key in ("off", "on"):
        res = relay_drain(dsn, redis_url, names[key], n, key == "on", cpu)
        res["ratio"], res["ratio_with_startup"] = res["rate"] / raw, res["rate_with_startup"] / raw
        result[key] = res
        print(
            f"  relay drain, write-back {key}: {res['rate']:,.0f} events/s"
            f" = {res['ratio']:.2f} x bare read"
            f" ({res['rate_with_startup']:,.0f} = {res['ratio_with_startup']:.2f} x"
            " counting process start-up);"
            f" CPU {res['cpu_us']:.1f} us/event (+{res['startup_cpu_s']:.2f}s start-up);"
            f" peak RSS {res['rss_mib']:.0f} MiB",
            flush=True,
        )
        print(
            f"    CPU per event: relay {res['cpu_us']:.1f} + PostgreSQL {res['pg_us']:.1f}"
            f" + Redis {res['redis_us']:.1f} = {res['total_us']:.1f} us; {CORES} cores fully"
            f" busy would drain at most {res['cap']:,.0f} events/s"
            f" = {res['cap'] / raw:.2f} x bare read",
            flush=True,
        )
    result["steal"] = steal_share(ticks)
    print(f"  CPU time stolen by the VM host during the round: {100 * result['steal']:.0f}%")
    with psycopg.connect(dsn, autocommit=True) as conn:
        for slot in names.values():
            conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        conn.execute("TRUNCATE event_outbox")
        conn.execute("CHECKPOINT")
    return result


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--poll-events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    n = args.events
    out: dict[str, Any] = {"events": n}
    with LocalPostgres() as pg, LocalRedis() as rd:
        migrate.apply(pg.dsn, SQL_DIR)
        base = Settings(database_url=pg.dsn)  # type: ignore[arg-type]
        cpu = ServerCpu(pg, rd.url)
        rounds = [drain_round(pg.dsn, rd.url, base, n, i, cpu) for i in range(args.rounds)]
        cpu.close()
        out["rounds"] = rounds
        print(f"median of {len(rounds)} rounds:", flush=True)
        for key in ("off", "on"):
            res = {k: statistics.median(r[key][k] for r in rounds) for k in rounds[0][key]}
            out[f"drain_{key}"] = res
            print(
                f"  relay drain, write-back {key}: {res['rate']:,.0f} events/s ="
                f" {res['ratio']:.2f} x bare read ({res['ratio_with_startup']:.2f} x counting"
                f" process start-up); CPU {res['cpu_us']:.1f} us/event; peak RSS"
                f" {res['rss_mib']:.0f} MiB; with PostgreSQL {res['pg_us']:.1f} and Redis"
                f" {res['redis_us']:.1f}: {res['total_us']:.1f} us/event, at most"
                f" {res['cap']:,.0f} events/s on {CORES} cores",
                flush=True,
            )
        for mark in (False, True):
            slot = f"lat_{'on' if mark else 'off'}"
            slots.create(base.model_copy(update={"slot": slot}))
            ticks = cpu_ticks()
            lat = latency(
                pg.dsn,
                rd.url,
                args.seconds,
                1000,
                lambda m=mark, s=slot: start_relay(pg.dsn, rd.url, s, m),
            )
            with psycopg.connect(pg.dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
                conn.execute("UPDATE event_outbox SET status = 'PUBLISHED'")
            key = "on" if mark else "off"
            out[f"lat_{key}"] = {
                "p50": pct(lat, 50),
                "p99": pct(lat, 99),
                "max": max(lat),
                "n": len(lat),
                "steal": steal_share(ticks),
            }
            print(
                f"relay latency @1000/s, write-back {key}: p50 {pct(lat, 50):.2f} ms,"
                f" p99 {pct(lat, 99):.2f} ms, max {max(lat):.1f} ms ({len(lat)} events;"
                f" {100 * out[f'lat_{key}']['steal']:.0f}% of CPU time stolen by the VM host)",
                flush=True,
            )
        # the seed's polling relay on the same machine
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("TRUNCATE event_outbox")
        rd_client = redis.Redis.from_url(rd.url)
        rd_client.flushall()
        backlog(pg.dsn, args.poll_events, "p")
        stop = threading.Event()
        t0 = time.perf_counter()
        th = threading.Thread(target=polling_reference.run, args=(pg.dsn, rd.url, stop))
        th.start()
        while rd_client.xlen("axiom:core:events") < args.poll_events:
            time.sleep(0.05)
        poll_rate = args.poll_events / (time.perf_counter() - t0)
        stop.set()
        th.join()
        rd_client.close()
        out["poll_rate"] = poll_rate
        print(f"polling reference drain: {poll_rate:,.0f} events/s", flush=True)
        lat = latency(pg.dsn, rd.url, args.seconds, 1000, lambda: start_poller(pg.dsn, rd.url))
        out["poll_lat"] = {"p50": pct(lat, 50), "p99": pct(lat, 99), "max": max(lat)}
        print(
            f"polling reference latency @1000/s: p50 {pct(lat, 50):.1f} ms,"
            f" p99 {pct(lat, 99):.1f} ms",
            flush=True,
        )
    print(orjson.dumps(out).decode())


if __name__ == "__main__":
    main()
