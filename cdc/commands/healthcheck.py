"""`cdc healthcheck`: probe this host's relay on its metrics port (the image's HEALTHCHECK)."""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request

from cdc.errors import ConfigError
from cdc.settings import Settings


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `healthcheck` command."""
    p = sub.add_parser(
        "healthcheck", help="exit 0 when the relay on CDC_METRICS_PORT answers /healthz 200"
    )
    p.add_argument("--ready", action="store_true", help="probe /readyz (streaming) instead")
    p.set_defaults(func=run)


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print the probe's answer; exit 0 on 200, 1 otherwise."""
    if not settings.metrics_port:
        raise ConfigError("CDC_METRICS_PORT is 0: the relay serves no health endpoint")
    host = settings.metrics_addr
    host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
    host = f"[{host}]" if ":" in host else host
    path = "/readyz" if args.ready else "/healthz"
    url = f"http://{host}:{settings.metrics_port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            print(resp.read().decode().strip())
            return 0
    except urllib.error.HTTPError as e:
        print(f"{e.code}: {e.read().decode().strip()}", file=sys.stderr)
    except OSError as e:
        print(f"{url}: {e}", file=sys.stderr)
    return 1
