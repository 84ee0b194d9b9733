"""Operator-typed times: durations ("7d", "12h", "90m") and instants (ISO-8601 or "2h" ago)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from cdc.errors import ConfigError

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """Turn "7d", "12h", "30m", "45s" or "2w" into a timedelta, or raise ConfigError."""
    m = _DURATION.match(text)
    if not m:
        raise ConfigError(
            f"{text!r} is not a duration", hint="use a number and a unit: 45s, 30m, 12h, 7d, 2w"
        )
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def parse_time(text: str, *, now: datetime | None = None) -> datetime:
    """Turn an ISO-8601 time (UTC when no offset) or a duration ago into an aware datetime."""
    if _DURATION.match(text):
        return (now or datetime.now(UTC)) - parse_duration(text)
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"{text!r} is not a time",
            hint="use ISO-8601 (2026-01-31T09:00:00Z, UTC when no offset) or an age like 2h",
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)
