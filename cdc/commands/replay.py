"""`cdc replay --since TS [--until TS] [--event-type T] [--tenant T]`: republish a time range."""

from __future__ import annotations

import argparse
import sys

import orjson

from cdc.commands import checked
from cdc.ops import replay as replaylib
from cdc.pg import db
from cdc.settings import Settings
from cdc.streams import redisconn, redisstate
from cdc.when import parse_time


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `replay` command."""
    p = sub.add_parser(
        "replay", help="republish outbox rows of a time range, each entry marked as a replay"
    )
    p.add_argument(
        "--since", required=True, type=checked(parse_time), help="ISO-8601 time or age (2h)"
    )
    p.add_argument("--until", type=checked(parse_time), help="exclusive end (default: now)")
    p.add_argument("--event-type", help="only this event type")
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--id", help="resume the replay run with this id (no duplicates)")
    p.add_argument(
        "--skip-present", action="store_true",
        help="leave out events already on their stream (recovering from a Redis reset)",
    )
    p.add_argument(
        "--ack-reset", action="store_true",
        help="afterwards, acknowledge the Redis reset `cdc status` reports",
    )
    p.add_argument("--dry-run", action="store_true", help="count the rows, publish nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Republish the matching rows; print the run id that tags them."""
    rng = replaylib.Range(
        since=parse_time(args.since),
        until=parse_time(args.until) if args.until else None,
        event_type=args.event_type,
        tenant=args.tenant,
        skip_present=args.skip_present,
    )
    if rng.until is not None and rng.until <= rng.since:
        print("cdc replay: --until must be after --since", file=sys.stderr)
        return 2
    replay_id = args.id or replaylib.new_id()
    with db.connect(settings.database_url, autocommit=True) as conn:
        if args.dry_run:
            run = replaylib.replay(conn, None, settings, rng, replay_id=replay_id, dry_run=True)
        else:
            with redisconn.connect(settings.redis_url) as client:
                run = replaylib.replay(conn, client, settings, rng, replay_id=replay_id)
            if args.ack_reset:
                acked = redisstate.acknowledge(conn, settings.slot)
                print("Redis reset acknowledged" if acked else "no Redis reset to acknowledge",
                      file=sys.stderr)
    if args.json:
        print(orjson.dumps(run.as_dict()).decode())
        return 0
    verb = "would republish" if args.dry_run else "republished"
    print(f"replay {run.replay_id}: {run.rows} row(s) matched, {verb} {run.added}"
          f" ({run.already} already done by this run id or on the stream,"
          f" {run.unroutable} without a route)")
    if args.skip_present:
        print(f"  {run.present} event(s) already on the streams were left out")
    for stream, n in sorted(run.by_stream.items()):
        print(f"  {stream}: {n}")
    if not args.dry_run:
        print(f"entries carry replay={run.replay_id}; resume with --id {run.replay_id}")
    return 0
