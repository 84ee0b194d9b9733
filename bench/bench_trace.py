"""The relay's per-event work with and without trace context columns (issue 16).

Captures real wal2json messages of N outbox inserts from a throwaway PostgreSQL, then times
in this process what the relay does per event: `Decoder.feed` and `Publisher.send` (route,
contract, entry lists, the MessagePack packing its sink does), with a sink that only packs.
The cases take turns pass by pass, in an order flipped every round, so a phase of contention
on the machine hits them alike; the cost of the columns is the median of the per-round
differences `empty - old schema` (the issue's bound: 0.2 us an event). Run it on two code trees
to compare them (the cases a tree cannot run are skipped):

    .venv/bin/python -m bench.bench_trace [--events 20000] [--rounds 30]

Cases: `old schema` (no traceparent/tracestate columns), `empty` (sql/009 applied, NULL),
`filled` (every event traced). Messages are fed as memoryviews, as the stream hands them over.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any

import psycopg

from cdc.observe.metrics import Metrics
from cdc.pg import migrate
from cdc.pipeline.checkpoint import Batch
from cdc.pipeline.decode import Decoder, OutboxEvent
from cdc.pipeline.publisher import Publisher
from cdc.pipeline.session import publisher
from cdc.settings import SQL_DIR, Settings
from cdc.streams import luascripts
from devkit.localservers import LocalPostgres

OPTIONS = ("'format-version', '2', 'add-tables', 'public.event_outbox', 'actions', 'insert',"
           " 'include-lsn', 'true', 'include-timestamp', 'true', 'include-types', 'false',"
           " 'include-transaction', 'true'")
TRACE = "'00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01', 'acme=blue'"


class PackOnly:
    """A sink that does the CPU work of RedisSink.send (packing) and sends nothing."""

    def send(self, by_stream: dict[str, list[list[str]]], names: dict[str, Any]) -> int:
        """Pack each stream's entries as the real sink does."""
        for entries in by_stream.values():
            luascripts.pack(entries)
        return len(by_stream)


def capture(dsn: str, n: int, case: str) -> list[memoryview]:
    """Return the wal2json messages of `n` inserts (100 a transaction) for one case."""
    traced = case == "filled"
    cols = ", traceparent, tracestate" if traced else ""
    vals = f", {TRACE}" if traced else ""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if case == "old schema":
            conn.execute("ALTER TABLE event_outbox DROP COLUMN IF EXISTS traceparent,"
                         " DROP COLUMN IF EXISTS tracestate")
        conn.execute("SELECT pg_create_logical_replication_slot('bench_trace', 'wal2json')")
        for start in range(0, n, 100):
            conn.execute(
                "INSERT INTO event_outbox (tenant_id, aggregate_type, aggregate_id, event_type,"
                f" payload{cols}) SELECT 'tenant-1', 'case', 'case-' || g, 'CASE_CREATED',"
                " jsonb_build_object('case_id', 'case-' || g, 'status', 'OPEN',"
                f" 'idempotency_key', 'k' || g){vals}"
                " FROM generate_series(%s::int, %s::int) g", (start + 1, start + 100))
        rows = conn.execute(
            f"SELECT data FROM pg_logical_slot_get_changes('bench_trace', NULL, NULL, {OPTIONS})"
        ).fetchall()
        conn.execute("SELECT pg_drop_replication_slot('bench_trace')")
        conn.execute("TRUNCATE event_outbox")
    return [memoryview(r[0].encode()) for r in rows]


def run(messages: list[memoryview], pub: Publisher, batch_size: int) -> tuple[float, float, int]:
    """Return (decode seconds, send seconds, events) for one pass."""
    dec = Decoder(epoch=1)
    t0 = time.perf_counter()
    events = [ev for m in messages if isinstance(ev := dec.feed(m), OutboxEvent)]
    t1 = time.perf_counter()
    for i in range(0, len(events), batch_size):
        pub.send(Batch(events[i:i + batch_size], 0))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, len(events)


def main() -> None:
    """Print us per event for each case this tree can run, and the paired differences."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    with LocalPostgres() as pg:
        dsn = pg.dsn
        migrate.apply(dsn, SQL_DIR)
        with psycopg.connect(dsn, autocommit=True) as conn:
            has_trace = conn.execute(
                "SELECT count(*) FROM information_schema.columns WHERE table_name ="
                " 'event_outbox' AND column_name = 'traceparent'").fetchone() == (1,)
        cases = ["empty", "filled", "old schema"] if has_trace else ["old schema"]
        captured = {case: capture(dsn, args.events, case) for case in cases}
        settings = Settings(database_url=dsn)  # type: ignore[arg-type]
        with psycopg.connect(dsn, autocommit=True) as conn:
            pub = publisher(settings, PackOnly(), conn, Metrics())  # type: ignore[arg-type]
            us: dict[str, list[float]] = {case: [] for case in cases}
            for r in range(args.rounds):
                for case in cases if r % 2 == 0 else cases[::-1]:
                    gc.collect()
                    d, s, n = run(captured[case], pub, settings.batch_size)
                    us[case].append((d + s) * 1e6 / n)
    for case in cases:
        print(f"{case:>10}: {n} events, decode + send {statistics.median(us[case]):.3f}"
              f" us/event (median of {args.rounds} passes; min {min(us[case]):.3f})")
    for case in cases[:-1] if has_trace else []:
        diff = [a - b for a, b in zip(us[case], us["old schema"], strict=True)]
        print(f"{case} - old schema, paired by round: median {statistics.median(diff):+.3f}"
              f" us/event (min of mins {min(us[case]) - min(us['old schema']):+.3f})")


if __name__ == "__main__":
    main()
