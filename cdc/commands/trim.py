"""`cdc trim`: trim streams below what every consumer group has acked; alarm over the cap."""

from __future__ import annotations

import argparse
from dataclasses import asdict

import orjson
from prometheus_client import start_http_server

from cdc.commands import stop_on_signals
from cdc.ops.trim import Trimmer, trim_registry
from cdc.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `trim` command."""
    p = sub.add_parser(
        "trim", help="trim streams below the oldest entry a group has not acked (never further)"
    )
    p.add_argument("--stream", action="append",
                   help="stream to trim (repeatable; default: every routed stream)")
    p.add_argument("--cap", type=int, default=1_000_000,
                   help="alarm (exit 1) when a stream stays longer than this; 0 = no cap")
    p.add_argument("--interval", type=float, default=0.0,
                   help="trim every N seconds until SIGTERM (default: once)")
    p.add_argument("--metrics-port", type=int, default=0,
                   help="serve core_stream_trimmed_total / core_stream_over_cap")
    p.add_argument("--json", action="store_true", help="one JSON object per stream and pass")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Trim once (or every --interval seconds); exit 1 when a stream is over the cap."""
    streams = args.stream or settings.router.streams()
    trimmer = Trimmer(redis_url=settings.redis_url, streams=streams,
                      cap=args.cap)
    stop = stop_on_signals()
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=trim_registry(trimmer))
    alarm = False
    try:
        while True:
            results = trimmer.trim_once()
            alarm = any(r.over_cap for r in results)
            for r in results:
                if args.json:
                    print(orjson.dumps(asdict(r)).decode(), flush=True)
                else:
                    flag = "  OVER CAP" if r.over_cap else ""
                    print(f"{r.stream}: removed {r.removed}, length {r.length}, "
                          f"kept from {r.min_id or '-'} ({r.holder or 'no groups'}){flag}",
                          flush=True)
            if args.interval <= 0 or stop.wait(args.interval):
                break
    finally:
        trimmer.close()
    return 1 if alarm else 0
