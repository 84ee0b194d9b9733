"""Event type → Redis stream, by ordered glob rules ("WATCH_*=axiom:watches,...")."""

from __future__ import annotations

import fnmatch

from cdc.errors import ConfigError, EventError


class Router:
    """Pick a stream for each event type; first matching rule wins; results cached."""

    def __init__(self, rules: str) -> None:
        self._rules: list[tuple[str, str]] = []
        for part in rules.split(","):
            pattern, sep, stream = part.strip().partition("=")
            if not sep or not pattern or not stream:
                raise ConfigError(
                    f"CDC_ROUTES: rule {part.strip()!r} is not PATTERN=stream",
                    hint="e.g. CDC_ROUTES='WATCH_*=axiom:watches,*=axiom:core:events'",
                )
            self._rules.append((pattern.strip(), stream.strip()))
        self._cache: dict[str, str] = {}

    def streams(self) -> list[str]:
        """Return every stream a rule can route to."""
        return list(dict.fromkeys(stream for _, stream in self._rules))

    def route(self, event_type: str) -> str:
        """Return the stream for `event_type`, or raise EventError when no rule matches."""
        stream = self._cache.get(event_type)
        if stream is None:
            for pattern, target in self._rules:
                if fnmatch.fnmatchcase(event_type, pattern):
                    stream = self._cache[event_type] = target
                    break
            else:
                raise EventError(f"no route for event type {event_type}")
        return stream
