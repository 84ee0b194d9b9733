"""The `cdc` command: build settings once, dispatch, and turn errors into exit codes.

Exit codes: 0 healthy/done, 1 a problem found, 2 a usage or configuration error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from cdc import commands
from cdc.errors import CdcError, ConfigError
from cdc.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser with every command registered."""
    parser = argparse.ArgumentParser(prog="cdc", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda i: i.name):
        importlib.import_module(f"cdc.commands.{info.name}").register(sub)
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
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args, _settings())
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
