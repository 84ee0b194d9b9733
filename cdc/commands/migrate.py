"""`cdc migrate`: apply pending SQL migrations, or list them with --status."""

from __future__ import annotations

import argparse

import orjson

from cdc.pg import migrate
from cdc.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `migrate` command."""
    p = sub.add_parser("migrate", help="apply pending migrations from sql/ with psql")
    p.add_argument("--status", action="store_true", help="list applied and pending migrations")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--stamp", action="store_true", help="(developers) write body checksums")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Apply, list, or stamp migrations."""
    directory = settings.migrations_dir
    if args.stamp:
        for path in migrate.stamp(directory):
            print(f"stamped {path.name}")
        return 0
    dsn = settings.database_url
    if args.status:
        states = migrate.status(dsn, directory)
        if args.json:
            rows = [
                {"version": s.migration.version, "name": s.migration.name,
                 "file": s.migration.path.name,
                 "applied_at": s.applied_at.isoformat() if s.applied_at else None}
                for s in states
            ]
            print(orjson.dumps(rows).decode())
        else:
            for s in states:
                when = s.applied_at.isoformat(timespec="seconds") if s.applied_at else "pending"
                print(f"{s.migration.path.name:40} {when}")
        return 0
    done = migrate.apply(dsn, directory)
    for mig in done:
        print(f"applied {mig.path.name}")
    if not done:
        print("nothing to apply: all migrations are current")
    return 0
