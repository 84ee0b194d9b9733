"""Helpers for relay tests: run the relay as a real process, write events, read streams."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import redis

from cdc.pg import slots
from cdc.settings import Settings

STREAMS = ("axiom:core:events", "axiom:watches", "axiom:workers")


def relay_env(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CDC_")}
    env.update(
        CDC_DATABASE_URL=settings.database_url.get_secret_value(),
        CDC_REDIS_URL=settings.redis_url.get_secret_value(),
        CDC_SLOT=settings.slot,
        CDC_STATUS_INTERVAL_S="0.2",
        CDC_STANDBY_MAX_BACKOFF_S="0.5",
    )
    env.update(extra)
    return env


def cdc(
    settings: Settings, *args: str, timeout: float = 120, **extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cdc", *args],
        env=relay_env(settings, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_relay(
    settings: Settings, log_path: str | None = None, **extra: str
) -> subprocess.Popen[bytes]:
    out: Any = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "cdc", "run"],
            env=relay_env(settings, **extra),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        if log_path:
            out.close()


@contextmanager
def relay(
    settings: Settings, log_path: str | None = None, **extra: str
) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_relay(settings, log_path, **extra)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_for(pred: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def insert_cases(
    dsn: str, n: int, *, tenant: str = "t1", tag: str = "", per_tx: int = 1000
) -> None:
    """Insert n CASE_CREATED events, `per_tx` rows per multi-row INSERT/transaction."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        done = 0
        while done < n:
            k = min(per_tx, n - done)
            conn.execute(
                "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
                " payload) SELECT %s, 'case', 'c' || g, 'CASE_CREATED',"
                " jsonb_build_object('case_id', 'c' || g, 'status', 'OPEN', 'seq', g,"
                " 'idempotency_key', %s || g) FROM generate_series(%s::int, %s::int) g",
                (tenant, f"{tag}k", done + 1, done + k),
            )
            done += k


def insert_aggregates(
    dsn: str, *, chunks: int = 4, per_tx: int = 500, aggregates: int = 50
) -> None:
    """Insert `chunks` transactions of `per_tx` CASE_CREATED events over `aggregates` cases,
    `seq` numbering them in commit order."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for chunk in range(chunks):
            conn.execute(
                "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
                " payload) SELECT 't1', 'case', 'case-' || (g %% %s), 'CASE_CREATED',"
                " jsonb_build_object('case_id', 'c', 'status', 'OPEN', 'seq', g)"
                " FROM generate_series(%s::int, %s::int) g",
                (aggregates, chunk * per_tx + 1, chunk * per_tx + per_tx),
            )


def http_get(port: int, path: str) -> tuple[int, str]:
    """GET `path` on a relay's metrics port: (status, body), or (0, the error) if none answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


def metric(port: int, name: str) -> float | None:
    """Return the value of an unlabelled series on the relay's /metrics, or None."""
    code, body = http_get(port, "/metrics")
    for line in body.splitlines() if code == 200 else []:
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def stream_events(rds: redis.Redis, stream: str = "axiom:core:events") -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    last = "-"
    while True:
        chunk = rds.xrange(stream, min=last, count=10000)
        if last != "-":
            chunk = chunk[1:]
        if not chunk:
            return out
        out.extend(fields for _, fields in chunk)
        last = chunk[-1][0]


def outbox_ids_in_commit_order(dsn: str) -> list[str]:
    """Return outbox ids ordered as the relay must publish them (by xmin commit, then ctid)."""
    with psycopg.connect(dsn) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT id::text FROM event_outbox ORDER BY (payload->>'seq')::int"
            )
        ]


def slot_lag(dsn: str, slot: str) -> int:
    """Return the slot's lag in bytes (cdc.pg.slots.status, the relay's own query)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        st = slots.status(conn, slot)
        assert st is not None and st.lag_bytes is not None
        return st.lag_bytes


def slot_active(dsn: str, slot: str) -> bool:
    """Return True while a walsender holds `slot`."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,)
        ).fetchone()
        return bool(row and row[0])
