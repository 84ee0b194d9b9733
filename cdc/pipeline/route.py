"""Event type → Redis stream, by ordered glob rules ("WATCH_*=axiom:watches,...").

A rule may split its stream into N partitions ("*=axiom:core:events/8"): the streams
`axiom:core:events:0` … `:7`, an event going to partition `partition(tenant_id,
aggregate_id, N)`, so each aggregate's events stay in commit order on one stream.
N = 1 (no "/N") keeps the plain stream name.
"""

from __future__ import annotations

import fnmatch
import zlib

from cdc.errors import ConfigError, EventError

MAX_PARTITIONS = 1024


def partition(tenant_id: str, aggregate_id: str, n: int) -> int:
    """Return the partition of an aggregate: CRC-32 (IEEE, as zlib) of its UTF-8 key mod n.

    The key is tenant_id, one 0x1F byte (unit separator), aggregate_id; consumers in other
    languages compute the same with any CRC-32/ISO-HDLC (docs/architecture.md has vectors).
    """
    return zlib.crc32(f"{tenant_id}\x1f{aggregate_id}".encode()) % n


def partition_stream(stream: str, part: int) -> str:
    """Return the name of partition `part` of `stream`."""
    return f"{stream}:{part}"


class Router:
    """Pick a stream for each event type; first matching rule wins; results cached."""

    def __init__(self, rules: str) -> None:
        self.rules = rules  # the CDC_ROUTES text this was parsed from
        self._rules: list[tuple[str, str]] = []
        self.partitions: dict[str, int] = {}  # stream → N, for every rule's stream
        for part in rules.split(","):
            pattern, sep, target = part.strip().partition("=")
            stream, slash, count = target.strip().partition("/")
            if not sep or not pattern.strip() or not stream:
                raise ConfigError(
                    f"CDC_ROUTES: rule {part.strip()!r} is not PATTERN=stream[/partitions]",
                    hint="e.g. CDC_ROUTES='WATCH_*=axiom:watches,*=axiom:core:events/8'",
                )
            n = int(count) if count.isdigit() else (1 if not slash else 0)
            if not 1 <= n <= MAX_PARTITIONS or self.partitions.get(stream, n) != n:
                raise ConfigError(
                    f"CDC_ROUTES: rule {part.strip()!r}: partitions must be 1 to"
                    f" {MAX_PARTITIONS}, the same on every rule of a stream",
                    hint="e.g. *=axiom:core:events/8",
                )
            self._rules.append((pattern.strip(), stream))
            self.partitions[stream] = n
        self._cache: dict[str, str] = {}

    def streams(self) -> list[str]:
        """Return every stream a rule can route to (each partition of a partitioned one)."""
        out: list[str] = []
        for stream, n in self.partitions.items():
            out += [stream] if n == 1 else [partition_stream(stream, p) for p in range(n)]
        return out

    def route(self, event_type: str) -> str:
        """Return the rule's stream for `event_type` (before partitioning), or raise EventError."""
        stream = self._cache.get(event_type)
        if stream is None:
            for pattern, target in self._rules:
                if fnmatch.fnmatchcase(event_type, pattern):
                    stream = self._cache[event_type] = target
                    break
            else:
                raise EventError(f"no route for event type {event_type}")
        return stream

    def stream_for(self, event_type: str, tenant_id: str, aggregate_id: str) -> str:
        """Return the stream an event goes to, its partition included."""
        stream = self.route(event_type)
        n = self.partitions[stream]
        return stream if n == 1 else partition_stream(stream, partition(tenant_id, aggregate_id, n))
