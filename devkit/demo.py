"""`make demo`: the whole pipeline on throwaway local servers, start to finish.

Start PostgreSQL (wal_level=logical, wal2json) and Redis on free ports, migrate, run the
relay, write sample events from concurrent transactions, show both consumer groups
receiving them (through the example consumers of cdc/examples.py) and the relay's
metrics, then clean everything up.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson
import psycopg
import redis

from cdc.consumers.examples import run_example
from cdc.pg import migrate
from cdc.settings import SQL_DIR
from cdc.streams import keys
from devkit.localservers import LocalPostgres, LocalRedis, free_port

WRITERS = 4
EVENTS_PER_WRITER = 100
GROUPS = ("synapse_group", "watch_cep_group")
EXAMPLE_STREAMS = (("synapse_group", keys.CORE_EVENTS), ("watch_cep_group", keys.WATCHES))
TYPES: list[tuple[str, str, Callable[[int], dict[str, str]]]] = [
    ("CASE_CREATED", "case", lambda i: {"case_id": f"case-{i}", "status": "OPEN"}),
    ("CASE_STATUS_CHANGED", "case",
     lambda i: {"case_id": f"case-{i}", "from_status": "OPEN", "to_status": "IN_PROGRESS"}),
    ("WATCH_ALERT_TRIGGERED", "watch",
     lambda i: {"watch_id": f"w-{i % 7}", "alert_id": f"a-{i}", "severity": "HIGH"}),
    ("WORKER_TASK_COMPLETED", "task", lambda i: {"task_id": f"t-{i}", "worker_id": "w1"}),
]


def write_events(dsn: str, writer: int) -> None:
    """Write EVENTS_PER_WRITER events, a few per transaction, like an application would."""
    rng = random.Random(writer)
    with psycopg.connect(dsn) as conn:
        i = 0
        while i < EVENTS_PER_WRITER:
            with conn.transaction():
                for _ in range(min(rng.randint(1, 5), EVENTS_PER_WRITER - i)):
                    event_type, agg, payload = TYPES[rng.randrange(len(TYPES))]
                    body = {**payload(i), "idempotency_key": f"demo-{writer}-{i}"}
                    conn.execute(
                        "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id,"
                        " event_type, payload) VALUES (%s, %s, %s, %s, %s)",
                        (f"tenant-{writer % 2}", agg, f"{agg}-{i}", event_type,
                         orjson.dumps(body).decode()),
                    )
                    i += 1


def read_group(client: redis.Redis, group: str, streams: list[str]) -> int:
    """Read and acknowledge everything pending for `group`; return how many entries."""
    seen = 0
    while True:
        got: Any = client.xreadgroup(
            group, "demo", dict.fromkeys(streams, ">"), count=500, block=200
        )
        if not got:
            return seen
        for stream, entries in got:
            client.xack(stream, group, *[eid for eid, _ in entries])
            seen += len(entries)


def main() -> int:
    """Run the demo; return 0 when every event reached both groups."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    with LocalPostgres() as pg, LocalRedis() as rd:
        print(f"PostgreSQL on 127.0.0.1:{pg.port} (wal_level=logical), Redis on :{rd.port}")
        for mig in migrate.apply(pg.dsn, SQL_DIR):
            print(f"migrated {mig.path.name}")
        metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
        env.update(CDC_DATABASE_URL=pg.dsn, CDC_REDIS_URL=rd.url,
                   CDC_METRICS_PORT=str(metrics_port), CDC_STATUS_INTERVAL_S="0.2",
                   CDC_METRICS_SAMPLE_S="0.5")
        relay = subprocess.Popen([sys.executable, "-m", "cdc", "run"], env=env)
        try:
            return _exercise(pg.dsn, rd.url, metrics_port, relay)
        finally:
            relay.send_signal(signal.SIGTERM)
            relay.wait(15)
            print(f"relay exited with {relay.returncode}; servers removed")


def _exercise(dsn: str, redis_url: str, metrics_port: int, relay: subprocess.Popen[bytes]) -> int:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    streams = [keys.CORE_EVENTS, keys.WATCHES, keys.WORKERS]
    deadline = time.monotonic() + 30
    if not _wait_started(client, streams, relay, deadline):
        print("relay did not start", file=sys.stderr)
        return 1
    total = WRITERS * EVENTS_PER_WRITER
    stop = threading.Event()
    lines: dict[str, list[str]] = {g: [] for g in GROUPS}
    handled: dict[str, Any] = {}

    def consume(group: str, stream: str) -> None:
        handled[group] = run_example(
            group, stream, redis_url=redis_url, stop=stop,
            on_entry=lambda _e, line: lines[group].append(line),
        )

    examples = [threading.Thread(target=consume, args=(g, s)) for g, s in EXAMPLE_STREAMS]
    for t in examples:
        t.start()
    t0 = time.monotonic()
    writers = [threading.Thread(target=write_events, args=(dsn, w)) for w in range(WRITERS)]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    print(f"{WRITERS} writers committed {total} events in {time.monotonic() - t0:.2f}s")
    while sum(client.xlen(s) for s in streams) < total and time.monotonic() < deadline + 30:
        time.sleep(0.05)
    print(f"published in {time.monotonic() - t0:.2f}s after the first write:")
    for s in streams:
        print(f"  {s:20} {client.xlen(s):5} entries")
    want = {g: client.xlen(s) for g, s in EXAMPLE_STREAMS}
    while any(len(lines[g]) < want[g] for g in GROUPS) and time.monotonic() < deadline + 60:
        time.sleep(0.05)
    stop.set()
    for t in examples:
        t.join()
    ok = True
    for group, stream in EXAMPLE_STREAMS:
        print(f"example consumer {group} on {stream}: handled {len(lines[group])}, e.g.")
        for line in lines[group][:3] + [x for x in lines[group] if "BURST" in x][:2]:
            print(f"    {line}")
        others = [s for s in streams if s != stream]
        seen = len(lines[group]) + read_group(client, group, others)
        print(f"consumer group {group:16} received {seen} entries")
        ok = ok and seen == total
    _print_metrics(metrics_port)
    client.close()
    print("demo OK" if ok else "demo FAILED: a group missed entries")
    return 0 if ok else 1


def _wait_started(
    client: redis.Redis, streams: list[str], relay: subprocess.Popen[bytes], deadline: float
) -> bool:
    while not all(client.exists(s) for s in streams):
        if time.monotonic() > deadline or relay.poll() is not None:
            return False
        time.sleep(0.1)
    return True


def _print_metrics(metrics_port: int) -> None:
    time.sleep(1.2)  # let the sampler refresh the query-based gauges
    body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read()
    print("relay metrics:")
    for line in body.decode().splitlines():
        if line.startswith(("core_event_outbox_published_total", "core_relay_lag_seconds",
                            "core_dlq_depth", "core_relay_commit_to_ack_seconds_count",
                            "core_relay_slot_lag_bytes", "core_event_outbox_pending")):
            print(f"  {line}")


if __name__ == "__main__":
    sys.exit(main())
