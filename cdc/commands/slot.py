"""`cdc slot create | drop | status`."""

from __future__ import annotations

import argparse
import sys

import orjson

from cdc.pg import db, slots
from cdc.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `slot` command group."""
    p = sub.add_parser("slot", help="create, drop or inspect the replication slot")
    ssub = p.add_subparsers(dest="slot_command", required=True)
    ssub.add_parser("create", help="create the slot (queues pre-slot PENDING rows for backfill)")
    drop = ssub.add_parser("drop", help="drop the slot")
    drop.add_argument("--yes", action="store_true", help="really drop it")
    st = ssub.add_parser(
        "status", help="show the slot's position and lag (exit 1 if missing or lost)"
    )
    st.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Dispatch the slot subcommand."""
    if args.slot_command == "create":
        if slots.ensure(settings):
            print(f"created slot {settings.slot}")
        else:
            print(f"slot {settings.slot} already exists")
        return 0
    if args.slot_command == "drop":
        if not args.yes:
            print(
                f"refusing to drop slot {settings.slot} without --yes. Events committed but not"
                " yet published would be lost to the stream; after re-creating the slot they are"
                " published only through the backfill (CDC_MARK_PUBLISHED=true).",
                file=sys.stderr,
            )
            return 2
        slots.drop(settings)
        print(f"dropped slot {settings.slot}")
        return 0
    with db.connect(settings.database_url) as conn:
        st = slots.status(conn, settings.slot)
    if st is None:
        print(f"slot {settings.slot} does not exist (fix: cdc slot create)", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(st.as_dict()).decode())
    else:
        for k, v in st.as_dict().items():
            print(f"{k:22} {v}")
    if st.wal_status == "lost":
        print(
            f"slot {settings.slot} is lost: PostgreSQL removed WAL it needed"
            " (fix: cdc slot drop --yes; cdc slot create; see docs/runbook.md)", file=sys.stderr,
        )
        return 1
    return 0
