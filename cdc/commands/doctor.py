"""`cdc doctor`: preflight checks of PostgreSQL and Redis, each problem with its fix."""

from __future__ import annotations

import argparse

import orjson

from cdc.ops import doctor
from cdc.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `doctor` command."""
    p = sub.add_parser(
        "doctor", help="check everything the relay needs; exit 1 if something is wrong"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print every finding; exit 1 when any check failed."""
    findings = doctor.diagnose(settings)
    if args.json:
        print(orjson.dumps([f.as_dict() for f in findings]).decode())
    else:
        print(doctor.render(findings))
    return 1 if any(f.level == doctor.FAIL for f in findings) else 0
