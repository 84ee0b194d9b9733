"""Prometheus metrics in their own registry, served on CDC_METRICS_PORT (cdc/health.py)."""

from __future__ import annotations

import time
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Beat:
    """The monotonic time the relay loop last updated a metric it updates regularly."""

    def __init__(self) -> None:
        self.at = time.monotonic()

    def age(self) -> float:
        """Return seconds since the last beat."""
        return time.monotonic() - self.at


class LastGauge(Gauge):
    """A gauge without labels that remembers the last value set (for /readyz)."""

    last = 0.0

    def set(self, value: float) -> None:
        """Set the gauge."""
        super().set(value)
        self.last = value


class _BeatGauge(LastGauge):
    """A gauge whose every set() is a beat."""

    beat: Beat

    def set(self, value: float) -> None:
        """Set the gauge and beat."""
        super().set(value)
        self.beat.at = time.monotonic()


class _BeatCounter(Counter):
    """A counter whose every inc() is a beat."""

    beat: Beat

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        """Increment the counter and beat."""
        super().inc(amount, exemplar)
        self.beat.at = time.monotonic()


M = TypeVar("M", _BeatGauge, _BeatCounter)


def _beating(metric: M, beat: Beat) -> M:
    metric.beat = beat
    return metric


class Metrics:
    """Every metric the relay exports."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        # The loop sets `up` on every session start and end (standing by: every retry),
        # `confirmed_lsn` every status interval while streaming, and counts `published`.
        self.beat = beat = Beat()
        self.published = _beating(_BeatCounter(
            "core_event_outbox_published", "Events published to Redis Streams", registry=r
        ), beat)
        self.failed = Counter(
            "core_event_outbox_failed", "Per-event failures (contract, size, route)", registry=r
        )
        self.dead_lettered = Counter(
            "core_event_outbox_dead_lettered", "Events moved to the dead-letter queue", registry=r
        )
        self.duplicates = Counter(
            "core_relay_duplicates_skipped", "Replayed events Redis already had", registry=r
        )
        self.pending = Gauge("core_event_outbox_pending", "Outbox rows in PENDING", registry=r)
        self.pending_age = Gauge(
            "core_event_outbox_pending_age_seconds", "Age of the oldest PENDING row (sampled)",
            registry=r,
        )
        self.lag_seconds = Gauge(
            "core_relay_lag_seconds", "Age of the newest commit not yet published", registry=r
        )
        self.dlq_depth = Gauge("core_dlq_depth", "Entries in axiom:dlq:events", registry=r)
        self.slot_lag_bytes = Gauge(
            "core_relay_slot_lag_bytes", "WAL bytes behind the slot's confirmed LSN", registry=r
        )
        self.confirmed_lsn = _beating(_BeatGauge(
            "core_relay_confirmed_lsn", "Last LSN confirmed to PostgreSQL", registry=r
        ), beat)
        self.ack_latency = Histogram(
            "core_relay_commit_to_ack_seconds", "Commit to Redis acknowledgement, per batch",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=r,
        )
        self.group_lag = Gauge(
            "core_consumer_group_lag", "Entries a consumer group has not yet been delivered",
            ["stream", "group"], registry=r,
        )
        self.stream_length = Gauge(
            "core_stream_length", "Entries in a routed stream (XLEN, sampled)", ["stream"],
            registry=r,
        )
        self.group_pending = Gauge(
            "core_consumer_group_pending", "Entries delivered to a group but not acknowledged",
            ["stream", "group"], registry=r,
        )
        self.redis_reset = LastGauge(
            "core_relay_redis_reset",
            "1 while a Redis reset (state lost after it acknowledged events) is unacknowledged",
            registry=r,
        )
        self.up = _beating(_BeatGauge(
            "core_relay_streaming", "1 while the relay holds the slot", registry=r
        ), beat)
        self.slot_active = LastGauge(
            "core_relay_slot_active", "1 while any consumer holds the slot (sampled)",
            registry=r,
        )
        self.sampler_errors = Counter(
            "core_relay_sampler_errors", "Gauge samples that failed, by source", ["source"],
            registry=r,
        )
