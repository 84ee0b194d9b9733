"""`cdc ontology consume|rebuild|digest`: Synapse's ontology cache in Redis, one or a cluster
(cdc/domain/ontology.py)."""

from __future__ import annotations

import argparse
import secrets
import sys

import orjson

from cdc.commands import stop_on_signals
from cdc.consumers.worker import Consumer
from cdc.domain import ontology, ontology_rebuild
from cdc.pg import db
from cdc.settings import Settings
from cdc.streams import keys, redisconn

GROUP = "synapse_ontology_group"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `ontology` command group."""
    p = sub.add_parser("ontology", help="Synapse's ontology cache: keep, rebuild, compare")
    cmds = p.add_subparsers(dest="ontology_command", required=True)
    c = cmds.add_parser("consume", help="keep the cache current from axiom:core:events")
    c.add_argument("--group", default=GROUP, help=f"consumer group (default {GROUP})")
    c.add_argument("--stream", default=keys.CORE_EVENTS)
    c.add_argument("--count", type=int, help="exit after acking this many entries")
    c.add_argument("--timeout", type=float, help="stop after this many seconds")
    c.set_defaults(func=run_consume)
    r = cmds.add_parser("rebuild", help="drop the cache and rebuild it from the outbox")
    r.add_argument("--tenant", help="only this tenant (default: every tenant)")
    r.add_argument("--check", action="store_true",
                   help="build a scratch copy, compare it with the live cache, touch nothing live")
    r.add_argument("--json", action="store_true", help="machine-readable output")
    r.set_defaults(func=run_rebuild)
    d = cmds.add_parser("digest", help="print a sha256 of each tenant's cache")
    d.add_argument("--tenant", help="only this tenant")
    d.add_argument("--json", action="store_true", help="machine-readable output")
    d.set_defaults(func=run_digest)


def run_consume(args: argparse.Namespace, settings: Settings) -> int:
    """Apply core events to the cache until SIGTERM/SIGINT, --count or --timeout."""
    stop = stop_on_signals()
    url = settings.redis_url
    with redisconn.connect(url) as client:
        cache = ontology.OntologyCache(client)
        consumer = Consumer(redis_url=url, group=args.group, streams=[args.stream],
                            handler=cache.handle, start_id="0", stop=stop)
        try:
            stats = consumer.run(limit=args.count, timeout=args.timeout)
        finally:
            consumer.close()
    print(f"ontology: handled={stats.handled} written={cache.applied.written}"
          f" stale={cache.applied.stale} ignored={cache.applied.ignored}"
          f" dead_lettered={stats.dead_lettered}", file=sys.stderr)
    return 0


def _show(digests: list[ontology_rebuild.Digest], as_json: bool) -> None:
    for d in digests:
        if as_json:
            print(orjson.dumps({"tenant": d.tenant, "sha256": d.sha256, "cases": d.cases,
                                "roles": d.roles, "edges": d.edges}).decode())
        else:
            print(f"{d.tenant}\t{d.sha256}\tcases={d.cases} roles={d.roles} edges={d.edges}")


def run_rebuild(args: argparse.Namespace, settings: Settings) -> int:
    """Rebuild (or, with --check, rebuild a scratch copy and compare); exit 1 on a difference."""
    ns = f"{keys.ONTOLOGY_NS}:check:{secrets.token_hex(4)}" if args.check else keys.ONTOLOGY_NS
    with db.connect(settings.database_url, autocommit=True) as conn, \
            redisconn.connect(settings.redis_url) as client:
        try:
            done = ontology_rebuild.rebuild(conn, client, settings, tenant=args.tenant, ns=ns)
            if not args.check:
                print(f"rebuilt from {done.rows} outbox row(s): dropped {done.dropped} key(s),"
                      f" wrote {done.applied.written}", file=sys.stderr)
                _show(done.digests, args.json)
                return 0
            live = ontology_rebuild.tenants(client, keys.OntologyKeys())
            names = set(done.applied.tenants) | set(live)
            if args.tenant is not None:
                names &= {args.tenant}
            differ = ontology_rebuild.compare(client, names, other=ns)
        finally:
            if args.check:
                for t in ontology_rebuild.tenants(client, keys.OntologyKeys(ns)):
                    ontology_rebuild.drop(client, t, ns=ns)
    for live_d, built in differ:
        print(f"DIFFERS {live_d.tenant}: live {live_d.sha256[:16]} (cases={live_d.cases})"
              f" rebuilt {built.sha256[:16]} (cases={built.cases})")
    print(f"{len(names) - len(differ)} of {len(names)} tenant(s) match the outbox")
    return 1 if differ else 0


def run_digest(args: argparse.Namespace, settings: Settings) -> int:
    """Print tenant, sha256 and node counts of the live cache."""
    with redisconn.connect(settings.redis_url) as client:
        names = [args.tenant] if args.tenant else ontology_rebuild.tenants(
            client, keys.OntologyKeys())
        _show([ontology_rebuild.digest(client, t) for t in names], args.json)
    return 0
