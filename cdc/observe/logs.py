"""Logging for the `cdc` command: text, or one JSON object a line (CDC_LOG_FORMAT=json).

Every record carries the slot. Messages are what the code logs: DSNs in them are
redacted where they are logged (settings.redact), so no secret reaches a line.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """Format a record as one JSON object: ts, level, logger, message, slot (and error)."""

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        out = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "slot": getattr(record, "slot", None),
        }
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


class _SlotFilter(logging.Filter):
    def __init__(self, slot: str) -> None:
        super().__init__()
        self.slot = slot

    def filter(self, record: logging.LogRecord) -> bool:
        record.slot = self.slot
        return True


def configure(*, fmt: str = "text", slot: str = "", verbose: bool = False) -> None:
    """Send log records to stderr in `fmt` (text or json), tagged with `slot`.

    As logging.basicConfig: nothing changes when the root logger has handlers already.
    """
    handler = logging.StreamHandler()
    handler.addFilter(_SlotFilter(slot))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
