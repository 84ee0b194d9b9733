"""`cdc stats verify|rebuild` and `cdc case-stats --tenant T`: Vision's case statistics."""

from __future__ import annotations

import argparse

import orjson

from cdc.domain import casestats
from cdc.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `stats` and `case-stats` commands."""
    p = sub.add_parser("stats", help="check or repair the case counters behind vision.case_stats")
    stats = p.add_subparsers(dest="stats_command", required=True)
    v = stats.add_parser("verify", help="compare vision.case_stats with count(*); exit 1 if off")
    v.add_argument("--json", action="store_true", help="machine-readable output")
    v.set_defaults(func=run_verify)
    r = stats.add_parser("rebuild", help="recompute counters from core.core_case (online)")
    r.add_argument("--fold-only", action="store_true", help="only merge per-writer shard rows")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.set_defaults(func=run_rebuild)

    c = sub.add_parser("case-stats", help="print one tenant's stats as Vision reads them")
    c.add_argument("--tenant", required=True, help="tenant id (set as app.tenant_id)")
    c.set_defaults(func=run_case_stats)


def run_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Print the tenants whose view figures differ from count(*); exit 1 if any."""
    report = casestats.verify(settings.database_url)
    if args.json:
        print(orjson.dumps({
            "ok": report.ok, "tenants": report.tenants, "cases": report.cases,
            "mismatches": [
                {"tenant_id": m.tenant_id, "view": m.view, "count": m.actual}
                for m in report.mismatches
            ],
        }, option=orjson.OPT_SORT_KEYS).decode())
    elif report.ok:
        print(f"ok: vision.case_stats matches count(*) for {report.tenants} tenant(s),"
              f" {report.cases} case(s)")
    else:
        print(f"MISMATCH: {len(report.mismatches)} tenant(s) differ from count(*)"
              " (repair: cdc stats rebuild)")
        for m in report.mismatches:
            view = orjson.dumps(m.view, option=orjson.OPT_SORT_KEYS).decode()
            actual = orjson.dumps(m.actual, option=orjson.OPT_SORT_KEYS).decode()
            print(f"  tenant {m.tenant_id}: view {view} count(*) {actual}")
    return 0 if report.ok else 1


def run_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    """Repair drifted counters and fold shard rows."""
    done = casestats.rebuild(settings.database_url, fold_only=args.fold_only)
    if args.json:
        print(orjson.dumps({"corrected": done.corrected, "folded": done.folded}).decode())
    else:
        print(f"rebuilt: {done.corrected} counter(s) corrected, {done.folded} shard row(s) folded")
    return 0


def run_case_stats(args: argparse.Namespace, settings: Settings) -> int:
    """Print {"total_cases": N, "active_cases": M} for one tenant."""
    stats = casestats.tenant_stats(settings.database_url, tenant_id=args.tenant)
    print(orjson.dumps(stats.as_dict()).decode())
    return 0
