"""`cdc run`: hold the slot and stream outbox inserts into Redis Streams."""

from __future__ import annotations

import argparse
import logging

from cdc.commands import stop_on_signals
from cdc.observe import health
from cdc.observe.metrics import Metrics
from cdc.observe.sampler import Sampler
from cdc.pg import db
from cdc.pipeline.relay import Relay
from cdc.settings import Settings

log = logging.getLogger("cdc.run")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `run` command."""
    p = sub.add_parser("run", help="stream event_outbox inserts into Redis Streams")
    p.add_argument(
        "--once", action="store_true",
        help="drain everything committed before start, then exit 0",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the relay until SIGTERM/SIGINT (or until drained with --once)."""
    metrics = Metrics()
    if settings.metrics_port:
        probes = health.Health(metrics, slot=settings.slot, stuck_after=settings.health_stuck_s)
        health.serve(probes, addr=settings.metrics_addr, port=settings.metrics_port)
    stop = stop_on_signals("finishing in-flight batches, then exiting", log=log)
    if settings.metrics_port:
        Sampler(settings, metrics, stop, interval=settings.metrics_sample_s).start()
    log.info(
        "relay starting: database %s, slot %s, table %s",
        db.redacted(settings.database_url), settings.slot, settings.outbox_table,
    )
    Relay(settings, metrics=metrics, stop=stop).run(once=args.once)
    log.info("relay stopped")
    return 0
