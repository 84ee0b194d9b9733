"""One module per command group; each exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cdc.errors import ConfigError


def checked(parse: Callable[[str], object]) -> Callable[[str], str]:
    """Return an argparse `type` that rejects what `parse` rejects, with its message."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ConfigError as e:
            raise argparse.ArgumentTypeError(e.one_line()) from None
        return text

    return check
