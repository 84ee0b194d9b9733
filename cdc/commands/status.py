"""`cdc status [--watch]`: relay, slot lag, outbox, streams, consumer groups, DLQ on one screen."""

from __future__ import annotations

import argparse
import sys
import time

import orjson

from cdc.ops import status
from cdc.settings import Settings

CLEAR = "\x1b[H\x1b[2J"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `status` command."""
    p = sub.add_parser("status", help="one screen of pipeline health; exit 1 on any problem")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--watch", action="store_true", help="refresh in place until Ctrl-C")
    p.add_argument("--interval", type=float, default=2.0, help="seconds between refreshes")
    p.add_argument("--count", type=int, default=0, help="with --watch: stop after N screens")
    p.add_argument(
        "--max-lag-bytes", type=int, default=status.DEFAULT_LIMITS.max_lag_bytes,
        help="slot lag counted as a problem",
    )
    p.add_argument(
        "--max-lag-seconds", type=float, default=status.DEFAULT_LIMITS.max_lag_seconds,
        help="age of the oldest PENDING row counted as a problem",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the status once, or refresh it like `top` with --watch."""
    limits = status.Limits(args.max_lag_bytes, args.max_lag_seconds)
    shown = 0
    try:
        while True:
            snap = status.snapshot(settings, limits)
            text = orjson.dumps(snap.as_dict()).decode() if args.json else status.render(snap)
            if args.watch and not args.json and sys.stdout.isatty():
                text = CLEAR + text
            print(text, flush=True)
            shown += 1
            if not args.watch or (args.count and shown >= args.count):
                return 1 if snap.problems else 0
            time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
