"""`cdc prune --older-than 7d`: delete old PUBLISHED outbox rows in small batches."""

from __future__ import annotations

import argparse

import orjson

from cdc.commands import checked
from cdc.errors import ConfigError
from cdc.ops import prune as prunelib
from cdc.pg import db
from cdc.settings import Settings
from cdc.when import parse_duration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `prune` command."""
    p = sub.add_parser("prune", help="outbox retention: delete old PUBLISHED rows in batches")
    p.add_argument(
        "--older-than", required=True, type=checked(parse_duration), help="age, e.g. 7d or 36h"
    )
    p.add_argument("--batch-size", type=int, default=5000, help="rows per short transaction")
    p.add_argument("--pause-ms", type=float, default=0.0, help="sleep between batches")
    p.add_argument("--dry-run", action="store_true", help="count the rows, delete nothing")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Delete (or count) the PUBLISHED rows older than --older-than."""
    if args.batch_size < 1:
        raise ConfigError("--batch-size must be at least 1")
    with db.connect(settings.database_url, autocommit=True) as conn:
        result = prunelib.prune(
            conn, settings, older_than=parse_duration(args.older_than),
            batch_size=args.batch_size, pause_s=args.pause_ms / 1000, dry_run=args.dry_run,
        )
    if args.json:
        print(orjson.dumps(result.as_dict()).decode())
    elif args.dry_run:
        print(f"would delete {result.deleted} PUBLISHED row(s) created before"
              f" {result.cutoff.isoformat(timespec='seconds')}")
    else:
        print(f"deleted {result.deleted} PUBLISHED row(s) created before"
              f" {result.cutoff.isoformat(timespec='seconds')} in {result.batches} batch(es),"
              f" {result.seconds:.2f} s")
    return 0
