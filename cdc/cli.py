# PYTHON_ARGCOMPLETE_OK
"""The `cdc` command: build settings once, dispatch, and turn errors into exit codes.

Exit codes: 0 healthy/done, 1 a problem found, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import pkgutil
import sys
from collections.abc import Sequence

import argcomplete
from pydantic import SecretStr, ValidationError

from cdc import commands
from cdc.errors import CdcError, ConfigError
from cdc.observe import logs
from cdc.settings import SHOWN_DEFAULTS, Settings

DESCRIPTION = "axiom-cdc: stream event_outbox inserts from PostgreSQL into Redis Streams."
EPILOG = (
    "Settings are CDC_* environment variables; `cdc COMMAND --help` lists the ones a command"
    " reads, with their defaults.\nExit codes: 0 ok, 1 a problem found, 2 a usage or"
    " configuration error.\nShell completion (bash, zsh):"
    ' eval "$(register-python-argcomplete cdc)"'
)
_DB, _REDIS = ("database_url",), ("redis_url",)
_STREAMS = ("routes", "consumer_groups")
_RELAY = (
    "database_url", "redis_url", "slot", "outbox_table", "metrics_port", "metrics_addr",
    "health_stuck_s", "metrics_sample_s", "mark_published", "batch_size", "linger_ms",
    "max_in_flight", "max_retry", "max_event_bytes", "stream_maxlen", *_STREAMS,
    "unknown_events", "backfill", "standby_max_backoff_s", "status_interval_s",
    "redis_min_replicas", "redis_wait_timeout_ms",
)
# The settings each command reads (every command also reads CDC_LOG_FORMAT).
USES: dict[str, tuple[str, ...]] = {
    "run": _RELAY,
    "migrate": (*_DB, "migrations_dir"),
    "doctor": (*_DB, *_REDIS, "slot", "outbox_table", *_STREAMS, "migrations_dir"),
    "status": (*_DB, *_REDIS, "slot", "outbox_table", *_STREAMS),
    "healthcheck": ("metrics_port", "metrics_addr"),
    "slot": (*_DB, "slot", "outbox_table"),
    "trim": (*_REDIS, *_STREAMS),
    "dlq": (*_DB, *_REDIS, "outbox_table", "routes"),
    "replay": (*_DB, *_REDIS, "slot", "routes"),
    "consume": _REDIS,
    "prune": (*_DB, "outbox_table"),
    "stats": _DB,
    "case-stats": _DB,
    "weaver": (*_DB, "weaver_secret_key"),
    "vision": _DB,
    "ontology": (*_DB, *_REDIS, "batch_size", "mark_published", "outbox_table"),
}


def settings_help(names: Sequence[str]) -> str:
    """Return one line per setting: CDC_NAME and its default (secrets never shown)."""
    lines = []
    for name in (*names, "log_format"):
        default = Settings.model_fields[name].default
        if isinstance(default, SecretStr):  # the built-in defaults hold no password
            shown = SHOWN_DEFAULTS.get(name, "(secret)")
        else:
            shown = "(unset)" if default is None else str(default)
        lines.append(f"  CDC_{name.upper():24} default: {shown}")
    return "settings (environment):\n" + "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every command registered."""
    parser = argparse.ArgumentParser(
        prog="cdc", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--version", action="version",
        version=f"cdc (axiom-cdc) {importlib.metadata.version('axiom-cdc')}",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        importlib.import_module(f"cdc.commands.{info.name}").register(sub)
    for name, command in sub.choices.items():
        command.formatter_class = argparse.RawDescriptionHelpFormatter
        command.epilog = settings_help(USES.get(name, tuple(Settings.model_fields)))
    return parser


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        err = e.errors()[0]
        name = "CDC_" + str(err["loc"][0]).upper() if err["loc"] else "CDC_*"
        raise ConfigError(f"{name}: {err['msg']}") from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code."""
    parser = build_parser()
    argcomplete.autocomplete(parser)  # shell completion: eval "$(register-python-argcomplete cdc)"
    args = parser.parse_args(argv)
    try:
        settings = _settings()
        logs.configure(fmt=settings.log_format, slot=settings.slot, verbose=args.verbose)
        code: int = args.func(args, settings)
        return code
    except ConfigError as e:
        print(f"cdc: error: {e.one_line()}", file=sys.stderr)
        return 2
    except CdcError as e:
        print(f"cdc: error: {e.one_line()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
