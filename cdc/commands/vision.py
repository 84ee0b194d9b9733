"""`cdc vision bind|unbind|list`: which roles read which tenants through vision.case_stats."""

from __future__ import annotations

import argparse

from cdc.domain import casestats
from cdc.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `vision` command group."""
    p = sub.add_parser("vision", help="bind Vision's login roles to the tenants they may read")
    cmds = p.add_subparsers(dest="vision_command", required=True)
    b = cmds.add_parser("bind", help="let members of ROLE read TENANT's case stats")
    b.add_argument("role")
    b.add_argument("tenant")
    b.set_defaults(func=run_bind)
    u = cmds.add_parser("unbind", help="take TENANT (or, without it, every tenant) from ROLE")
    u.add_argument("role", help="role name, or the OID `cdc vision list` shows for a dropped role")
    u.add_argument("tenant", nargs="?")
    u.set_defaults(func=run_unbind)
    cmds.add_parser("list", help="print every binding").set_defaults(func=run_list)


def run_bind(args: argparse.Namespace, settings: Settings) -> int:
    """Bind one role to one tenant."""
    new = casestats.bind(settings.database_url, args.role, args.tenant)
    print(f"{'bound' if new else 'already bound'}: {args.role} reads tenant {args.tenant}")
    return 0


def run_unbind(args: argparse.Namespace, settings: Settings) -> int:
    """Remove bindings; exit 1 when there was none to remove."""
    n = casestats.unbind(settings.database_url, args.role, args.tenant)
    what = f"tenant {args.tenant}" if args.tenant else "every tenant"
    print(f"unbound {n} binding(s): {args.role} from {what}")
    return 0 if n else 1


def run_list(args: argparse.Namespace, settings: Settings) -> int:
    """Print role, tenant, bound_at; mark rows of dropped roles."""
    for b in casestats.bindings(settings.database_url):
        gone = "" if b.exists else "  (role dropped: binds nobody; `cdc vision unbind` it)"
        print(f"{b.role}\t{b.tenant_id}\t{b.bound_at.isoformat()}{gone}")
    return 0
