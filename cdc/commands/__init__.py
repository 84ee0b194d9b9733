"""One module per command group; each exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

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


def stop_on_signals(
    note: str | None = None, *, log: logging.Logger | None = None
) -> threading.Event:
    """Return an event that SIGTERM or SIGINT sets (logging `note` to `log` when given)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if note:
            (log or logging.getLogger("cdc")).info("%s: %s", signal.Signals(signum).name, note)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
