"""Chaos helpers: a cuttable TCP proxy, a producer that survives outages, the invariant check."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field

import psycopg
import redis

from cdc.pipeline.route import Router
from cdc.settings import DEFAULT_ROUTES
from tests.relayutil import STREAMS, slot_lag, stream_events, wait_for

DLQ = "axiom:dlq:events"
BIG_LIMIT = 4096  # CDC_MAX_EVENT_BYTES in runs with poison events


class TcpProxy:
    """Forward 127.0.0.1:<port> to a target port; `cut()` drops every link and refuses.

    While cut, the proxy keeps its port (so nothing else can take it) but resets every
    new connection at once, which a client sees as a refused connection.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.cuts = 0
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self._closed = False
        self._refusing = False
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self._listener.settimeout(0.05)
        self.port = int(self._listener.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:  # timeout
                continue
            client.settimeout(None)
            if self._refusing:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._refusing:  # cut while we were connecting
                    _reset(client)
                    _reset(upstream)
                    continue
                self._socks |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()
        self._listener.close()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src)
            self._drop(dst)

    def _drop(self, s: socket.socket) -> None:
        with self._lock:
            self._socks.discard(s)
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        s.close()

    def cut(self, seconds: float) -> None:
        """Close every connection, refuse new ones for `seconds`, then forward again."""
        with self._lock:
            self._refusing = True
            socks, self._socks = list(self._socks), set()
        for s in socks:
            self._drop(s)
        self.cuts += 1
        time.sleep(seconds)
        self._refusing = False

    def close(self) -> None:
        """Drop every link and stop listening."""
        self.cut(0)
        self._closed = True
        self._thread.join(5)


def _reset(s: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a refused or broken link looks to the peer."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def is_poison(seq: int) -> str:
    """Return the poison kind of event `seq` in runs with poison ('' = a normal event)."""
    if seq % 997 == 500:
        return "contract"
    if seq % 997 == 0:
        return "big"
    return ""


_INSERT = """
INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
SELECT 't1', 'case', 'a' || (g %% 50),
  CASE WHEN %(poison)s AND g %% 997 = 500 THEN 'CASE_CREATED'
       WHEN g %% 10 IN (7, 8) THEN 'WATCH_ALERT_TRIGGERED'
       WHEN g %% 10 = 9 THEN 'WORKER_TASK_COMPLETED'
       ELSE 'CASE_CREATED' END,
  CASE WHEN %(poison)s AND g %% 997 = 500
         THEN jsonb_build_object('status', 'OPEN', 'seq', g, 'idempotency_key', 'k' || g)
       ELSE jsonb_build_object('case_id', 'c' || g, 'status', 'OPEN', 'watch_id', 'w',
         'alert_id', 'a' || g, 'severity', 'HIGH', 'task_id', 't' || g, 'worker_id', 'w',
         'seq', g, 'idempotency_key', 'k' || g)
         || CASE WHEN %(poison)s AND g %% 997 = 0
              THEN jsonb_build_object('blob', repeat('x', %(big)s)) ELSE '{}'::jsonb END
  END
FROM generate_series(%(a)s::bigint, %(b)s::bigint) g
"""


_LEAN_INSERT = """
INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type, payload)
SELECT 't1', 'case', 'a' || (g %% 50), 'CASE_CREATED',
  jsonb_build_object('case_id', 'c' || g, 'status', 'OPEN', 'seq', g, 'idempotency_key', 'k' || g)
FROM generate_series(%(a)s::bigint, %(b)s::bigint) g
"""


@dataclass
class Producer:
    """Insert events 1..n in order, `per_tx` per transaction, riding out PostgreSQL outages."""

    dsn: str
    n: int
    per_tx: int = 500
    poison: bool = False
    pause: float = 0.0
    lean: bool = False  # CASE_CREATED only, small payloads
    retries: int = field(default=0, init=False)
    done: int = field(default=0, init=False)
    error: BaseException | None = field(default=None, init=False)

    def start(self) -> threading.Thread:
        """Run in a thread; return it."""
        t = threading.Thread(target=self._run, daemon=True)
        t.start()
        return t

    def _run(self) -> None:
        try:
            self.run()
        except BaseException as e:
            self.error = e
            raise

    def run(self) -> None:
        """Insert every event; a chunk whose commit was lost in an outage is not redone twice."""
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        deadline = time.monotonic() + 120
        try:
            while self.done < self.n:
                a, b = self.done + 1, min(self.n, self.done + self.per_tx)
                try:
                    if conn is None or conn.closed:
                        conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=3)
                    stmt = _LEAN_INSERT if self.lean else _INSERT
                    conn.execute(stmt, {"poison": self.poison, "big": BIG_LIMIT, "a": a, "b": b})
                except psycopg.errors.UniqueViolation:
                    pass  # the chunk committed before the link broke: its keys exist
                except psycopg.OperationalError:
                    self.retries += 1
                    if time.monotonic() > deadline:
                        raise
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(0.1)
                    continue
                self.done = b
                if self.pause:
                    time.sleep(self.pause)
        finally:
            if conn is not None:
                conn.close()


@dataclass
class Figures:
    """What a chaos case reports."""

    events: int = 0
    published: int = 0
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0
    dlq: int = 0
    poison: int = 0
    slot_lag: int = 0


def _expected(dsn: str) -> tuple[dict[str, list[str]], set[str], int, int]:
    """Return per-stream ids in commit order, dead-lettered ids, row count, unpublished rows."""
    router = Router(DEFAULT_ROUTES)
    per_stream: dict[str, list[str]] = {s: [] for s in STREAMS}
    dead: set[str] = set()
    unpublished = 0
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT id::text, event_type, status FROM event_outbox"
            " ORDER BY (payload->>'seq')::bigint"
        ).fetchall()
    for eid, event_type, status in rows:
        if status == "DEAD_LETTER":
            dead.add(eid)
            continue
        unpublished += status != "PUBLISHED"
        per_stream[router.route(event_type)].append(eid)
    return per_stream, dead, len(rows), unpublished


def wait_all_published(dsn: str, rds: redis.Redis, n: int, timeout: float = 90) -> None:
    """Wait until the streams and the DLQ hold `n` entries in all."""

    def total() -> int:
        return sum(int(rds.xlen(s)) for s in (*STREAMS, DLQ))

    wait_for(lambda: total() >= n, timeout=timeout, what=f"{n} entries in the streams")


def check_invariants(
    dsn: str, rds: redis.Redis, slot: str, *, poison: set[str] | None = None,
    write_back: bool = True,
) -> Figures:
    """Assert: every committed event once, in commit order per stream; lag ≈ 0; DLQ = poison."""
    per_stream, dead, rows, _ = _expected(dsn)
    wait_all_published(dsn, rds, rows)
    time.sleep(0.5)  # a duplicate would land now
    lag = [0]

    def caught_up() -> bool:
        lag[0] = slot_lag(dsn, slot)
        return lag[0] < 16 * 1024

    wait_for(caught_up, timeout=30, what="slot lag ≈ 0")
    per_stream, dead, rows, unpublished = _expected(dsn)
    f = Figures(events=rows, poison=len(poison or ()), slot_lag=lag[0])
    for stream, want in per_stream.items():
        got = [e["event_id"] for e in stream_events(rds, stream)]
        f.published += len(got)
        f.lost += len(set(want) - set(got))
        f.duplicated += len(got) - len(set(got))
        if got != want and not f.lost and not f.duplicated:
            f.out_of_order += sum(1 for x, y in zip(got, want, strict=True) if x != y)
    dlq = [e["event_id"] for e in stream_events(rds, DLQ)]
    f.dlq = len(dlq)
    f.duplicated += len(dlq) - len(set(dlq))
    assert f.lost == 0 and f.duplicated == 0 and f.out_of_order == 0, f
    assert set(dlq) == dead == (poison or set()), (sorted(dlq), sorted(dead))
    if write_back:
        assert unpublished == 0, f"{unpublished} rows not marked PUBLISHED"
    assert_published_rows_have_entries(dsn, rds)
    return f


def assert_published_rows_have_entries(dsn: str, rds: redis.Redis) -> None:
    """Assert: no row PUBLISHED without its entry; every DEAD_LETTER row complete.

    A dead letter is complete with its event_dead_letter row and exactly one DLQ entry.
    """
    on_streams = {e["event_id"] for s in STREAMS for e in stream_events(rds, s)}
    dlq = [e["event_id"] for e in stream_events(rds, DLQ)]
    with psycopg.connect(dsn) as conn:
        published = {r[0] for r in conn.execute(
            "SELECT id::text FROM event_outbox WHERE status = 'PUBLISHED'")}
        dead = {r[0] for r in conn.execute(
            "SELECT id::text FROM event_outbox WHERE status = 'DEAD_LETTER'")}
        dead_rows = {r[0] for r in conn.execute(
            "SELECT event_id::text FROM event_dead_letter")}
    missing = published - on_streams
    assert not missing, f"{len(missing)} rows PUBLISHED without their entry: {sorted(missing)[:5]}"
    assert dead == dead_rows == set(dlq) and len(dlq) == len(set(dlq)), (
        f"dead letters incomplete: {len(dead)} rows DEAD_LETTER, {len(dead_rows)}"
        f" event_dead_letter rows, {len(dlq)} DLQ entries ({len(set(dlq))} distinct)"
    )


def poison_ids(dsn: str) -> set[str]:
    """Return the ids of the events `is_poison` made bad."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT id::text, (payload->>'seq')::bigint FROM event_outbox")
        return {eid for eid, seq in rows if is_poison(int(seq))}


def rss_kib(pid: int) -> tuple[int, int]:
    """Return (VmRSS, VmHWM) of `pid` in KiB."""
    vals: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                vals[key] = int(rest.split()[0])
    return vals.get("VmRSS", 0), vals.get("VmHWM", 0)
