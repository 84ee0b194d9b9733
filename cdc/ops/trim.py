"""Trim streams without dropping anything a consumer group has not acknowledged.

Each stream is trimmed (lua/trim.lua, one atomic step) below the oldest entry that some
group still needs: its oldest pending entry, or the one after its last-delivered-id.
A stream longer than the hard cap after that is not cut: it raises the alarm
(`core_stream_over_cap` = 1, exit code 1) naming the group that holds it back.
A stream without groups is never trimmed here. On a Redis Cluster each stream's script runs
on the master that owns the stream.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from cdc.streams import luascripts, redisconn, urls

log = logging.getLogger(__name__)
TRIM = luascripts.script("trim")


@dataclass(frozen=True, slots=True)
class TrimResult:
    """What one trim pass did to one stream."""

    stream: str
    removed: int
    min_id: str  # entries below this id were removed ('' = nothing was safe to remove)
    length: int
    holder: str  # the group whose oldest needed entry is `min_id`
    over_cap: bool


class Trimmer:
    """Trim `streams` below what every group has acked; alarm above `cap` entries."""

    def __init__(
        self, *, redis_url: urls.Url, streams: Sequence[str], cap: int = 1_000_000
    ) -> None:
        self.streams = list(streams)
        self.cap = cap
        self.removed_total = dict.fromkeys(self.streams, 0)
        self.last: dict[str, TrimResult] = {}
        self._r = redisconn.open_client(redis_url, timeout=30)

    def trim_once(self) -> list[TrimResult]:
        """Trim every stream once; return what happened to each."""
        results = []
        for stream in self.streams:
            try:
                reply: Any = TRIM(self._r, [stream], [])
            except (redis.RedisError, OSError) as e:
                raise redisconn.translate(e, f"trim of {stream}") from None
            removed, min_id, length, holder = int(reply[0]), str(reply[1]), int(reply[2]), reply[3]
            over = self.cap > 0 and length > self.cap
            result = TrimResult(stream, removed, min_id, length, str(holder), over)
            self.removed_total[stream] += removed
            self.last[stream] = result
            if over:
                log.error(
                    "ALARM: %s holds %d entries, over the cap of %d; group %s has not acked"
                    " from %s. Nothing was discarded: speed up or fix that group's consumers,"
                    " or delete the group if it is abandoned",
                    stream, length, self.cap, holder or "(none)", min_id or "the start",
                )
            results.append(result)
        return results

    def close(self) -> None:
        """Close the Redis connection."""
        self._r.close()


class _TrimCollector(Collector):
    def __init__(self, trimmer: Trimmer) -> None:
        self.t = trimmer

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        removed = CounterMetricFamily(
            "core_stream_trimmed", "Entries trimmed after every group acked them",
            labels=["stream"],
        )
        length = GaugeMetricFamily("core_stream_length", "Stream length after trimming",
                                   labels=["stream"])
        over = GaugeMetricFamily(
            "core_stream_over_cap", "1 when unacked entries keep a stream above its cap",
            labels=["stream"],
        )
        for stream in self.t.streams:
            removed.add_metric([stream], self.t.removed_total[stream])
            last = self.t.last.get(stream)
            if last is not None:
                length.add_metric([stream], last.length)
                over.add_metric([stream], 1 if last.over_cap else 0)
        yield removed
        yield length
        yield over


def trim_registry(trimmer: Trimmer) -> CollectorRegistry:
    """Return a registry exporting the trimmer's counters and the over-cap alarm."""
    registry = CollectorRegistry()
    registry.register(_TrimCollector(trimmer))
    return registry
