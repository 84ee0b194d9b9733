"""`cdc dlq list | show ID | replay [ID...|--all] | purge --yes`: the dead-letter queue."""

from __future__ import annotations

import argparse
import sys

import orjson

from cdc.ops import dlq
from cdc.pg import db
from cdc.settings import Settings
from cdc.streams import keys, redisconn


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `dlq` command group."""
    p = sub.add_parser("dlq", help="inspect, replay or purge dead letters")
    cmds = p.add_subparsers(dest="dlq_command", required=True)
    ls = cmds.add_parser("list", help="list dead letters not yet replayed")
    ls.add_argument("--all", action="store_true", help="include replayed ones")
    ls.add_argument("--limit", type=int, default=100)
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=run_list)
    show = cmds.add_parser("show", help="show one dead letter with its payload and error")
    show.add_argument("id", help="dead-letter id (number) or event id (uuid)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=run_show)
    rep = cmds.add_parser("replay", help="republish dead letters on their original streams")
    rep.add_argument("ids", nargs="*", metavar="ID", help="dead-letter ids or event ids")
    rep.add_argument("--all", action="store_true", help="every dead letter not yet replayed")
    rep.add_argument(
        "--no-validate", action="store_true",
        help="republish even if the payload still breaks its contract or size limit",
    )
    rep.add_argument("--json", action="store_true", help="machine-readable output")
    rep.set_defaults(func=run_replay)
    purge = cmds.add_parser("purge", help="delete dead letters and their DLQ stream entries")
    purge.add_argument("--yes", action="store_true", help="really delete them")
    purge.add_argument("--replayed", action="store_true", help="only those already replayed")
    purge.set_defaults(func=run_purge)


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """List dead letters, oldest first."""
    with db.connect(settings.database_url) as conn:
        rows = dlq.list_dead(conn, settings, replayed=args.all, limit=args.limit)
    if args.json:
        print(orjson.dumps([r.as_dict() for r in rows]).decode())
        return 0
    for r in rows:
        replayed = f"replayed {r.replayed_at:%Y-%m-%d %H:%M}" if r.replayed_at else "waiting"
        print(
            f"{r.id:>6}  {r.event_id}  {r.event_type:24} {r.tenant_id:12}"
            f" {r.dead_lettered_at:%Y-%m-%d %H:%M:%S}  {replayed}  {r.error[:60]}"
        )
    print(f"{len(rows)} dead letter(s)" + ("" if args.all else " not yet replayed"))
    return 0


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    """Print one dead letter in full; exit 1 if there is no such dead letter."""
    with db.connect(settings.database_url) as conn:
        dead = dlq.get(conn, settings, args.id)
    if dead is None:
        print(f"no dead letter {args.id} (see: cdc dlq list --all)", file=sys.stderr)
        return 1
    d = dead.as_dict()
    if args.json:
        print(orjson.dumps(d).decode())
        return 0
    for k, v in d.items():
        if k != "payload":
            print(f"{k:18} {v}")
    print("payload")
    print(orjson.dumps(d["payload"], option=orjson.OPT_INDENT_2).decode())
    return 0


def run_replay(args: argparse.Namespace, settings: Settings) -> int:
    """Republish dead letters; exit 1 if any could not be (missing, still invalid)."""
    if bool(args.ids) == bool(args.all):
        print("cdc dlq replay: give dead-letter IDs or --all (not both)", file=sys.stderr)
        return 2
    with (
        db.connect(settings.database_url, autocommit=True) as conn,
        redisconn.connect(settings.redis_url) as client,
    ):
        report = dlq.replay(
            conn, client, settings, None if args.all else args.ids,
            validate=not args.no_validate,
        )
    if args.json:
        print(orjson.dumps(report.as_dict()).decode())
    else:
        for event_id in report.replayed:
            print(f"replayed {event_id}")
        for event_id in report.already:
            print(f"already replayed {event_id} (left as is: it is on its stream once)")
        for event_id, why in report.invalid.items():
            print(
                f"NOT replayed {event_id}: {why} (fix the payload in event_dead_letter, or"
                " pass --no-validate)"
            )
        for ident in report.missing:
            print(f"NOT replayed {ident}: no such dead letter")
        print(f"{len(report.replayed)} replayed, {len(report.already)} already replayed,"
              f" {len(report.invalid) + len(report.missing)} not replayed")
    return 1 if report.invalid or report.missing else 0


def run_purge(args: argparse.Namespace, settings: Settings) -> int:
    """Delete dead letters (needs --yes)."""
    if not args.yes:
        print(
            "refusing to purge without --yes: dead letters not replayed are gone for good"
            " (see cdc dlq list; cdc dlq purge --yes --replayed keeps them)", file=sys.stderr,
        )
        return 2
    with (
        db.connect(settings.database_url, autocommit=True) as conn,
        redisconn.connect(settings.redis_url) as client,
    ):
        rows, entries = dlq.purge(conn, client, settings, replayed_only=args.replayed)
    print(f"purged {rows} dead letter(s) and {entries} {keys.DLQ} entr(y/ies)")
    return 0
