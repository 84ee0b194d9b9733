"""`cdc consume --stream S --group G`: read a stream as a group consumer and print its entries."""

from __future__ import annotations

import argparse
import sys

import orjson
from prometheus_client import start_http_server

from cdc.commands import stop_on_signals
from cdc.consumers.worker import Consumer, Entry, consumer_registry
from cdc.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `consume` command."""
    p = sub.add_parser(
        "consume", help="read a stream through a consumer group, print and ack each entry"
    )
    p.add_argument("--stream", action="append", required=True, help="stream (repeatable)")
    p.add_argument("--group", required=True, help="consumer group (created if absent)")
    p.add_argument("--consumer", help="consumer name (default host-pid)")
    p.add_argument("--count", type=int, help="exit 0 after acking this many entries")
    p.add_argument(
        "--timeout", type=float,
        help="stop after this many seconds (exit 1 if --count was not reached)",
    )
    p.add_argument("--from-start", action="store_true",
                   help="a new group starts at the stream's first entry (default: new entries)")
    p.add_argument("--batch", type=int, default=100, help="entries per XREADGROUP")
    p.add_argument("--claim-idle-ms", type=int, default=30_000,
                   help="take over entries pending this long (dead consumers, failed handlers)")
    p.add_argument("--max-deliveries", type=int, default=5,
                   help="move an entry delivered more often than this to the DLQ")
    p.add_argument("--dedup", action="store_true", help="skip event ids the group already handled")
    p.add_argument("--ordered", action="store_true",
                   help="--stream names a partitioned route: own a fair share of its partitions"
                   " through leases, each aggregate's events in commit order")
    p.add_argument("--lease-ms", type=int, default=10_000,
                   help="with --ordered: a partition's lease, renewed every third of it")
    p.add_argument("--json", action="store_true", help="one JSON object per entry")
    p.add_argument("--quiet", action="store_true", help="print nothing per entry")
    p.add_argument("--metrics-port", type=int, default=0, help="serve core_consumer_* metrics")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Consume until SIGTERM/SIGINT, --count or --timeout."""
    stop = stop_on_signals()

    def show(entry: Entry) -> None:
        if args.quiet:
            return
        if args.json:
            line = orjson.dumps({"stream": entry.stream, "id": entry.id, **entry.fields}).decode()
        else:
            line = (f"{entry.stream} {entry.id} {entry.event_type} {entry.event_id}"
                    f" {entry.fields.get('payload', '')}")
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    consumer = Consumer(
        redis_url=settings.redis_url, group=args.group, streams=args.stream,
        handler=show, consumer=args.consumer, count=args.batch,
        claim_idle_ms=args.claim_idle_ms, max_deliveries=args.max_deliveries,
        dedup=args.dedup, start_id="0" if args.from_start else "$", ordered=args.ordered,
        lease_ms=args.lease_ms, stop=stop,
    )
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=consumer_registry([consumer]))
    try:
        stats = consumer.run(limit=args.count, timeout=args.timeout)
    finally:
        consumer.close()
    print(
        f"consumed: handled={stats.handled} acked={stats.acked} failed={stats.failed}"
        f" claimed={stats.claimed} dead_lettered={stats.dead_lettered}"
        f" duplicates={stats.duplicates}"
        + (f" leases_acquired={stats.leases_acquired} leases_lost={stats.leases_lost}"
           f" fenced={stats.fenced}" if args.ordered else ""),
        file=sys.stderr,
    )
    if args.count is not None and stats.acked < args.count and not stop.is_set():
        return 1
    return 0
