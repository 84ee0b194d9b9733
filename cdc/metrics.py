"""Prometheus metrics in their own registry, served on CDC_METRICS_PORT."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    """Every metric the relay exports."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.published = Counter(
            "core_event_outbox_published", "Events published to Redis Streams", registry=r
        )
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
        self.lag_seconds = Gauge(
            "core_relay_lag_seconds", "Age of the newest commit not yet published", registry=r
        )
        self.dlq_depth = Gauge("core_dlq_depth", "Entries in axiom:dlq:events", registry=r)
        self.slot_lag_bytes = Gauge(
            "core_relay_slot_lag_bytes", "WAL bytes behind the slot's confirmed LSN", registry=r
        )
        self.confirmed_lsn = Gauge(
            "core_relay_confirmed_lsn", "Last LSN confirmed to PostgreSQL", registry=r
        )
        self.ack_latency = Histogram(
            "core_relay_commit_to_ack_seconds", "Commit to Redis acknowledgement, per batch",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5),
            registry=r,
        )
        self.group_lag = Gauge(
            "core_consumer_group_lag", "Entries a consumer group has not yet been delivered",
            ["stream", "group"], registry=r,
        )
        self.group_pending = Gauge(
            "core_consumer_group_pending", "Entries delivered to a group but not acknowledged",
            ["stream", "group"], registry=r,
        )
        self.redis_reset = Gauge(
            "core_relay_redis_reset",
            "1 while a Redis reset (state lost after it acknowledged events) is unacknowledged",
            registry=r,
        )
        self.up = Gauge("core_relay_streaming", "1 while the relay holds the slot", registry=r)

    def serve(self, port: int) -> None:
        """Start the HTTP exporter on `port` (0 = off)."""
        if port:
            start_http_server(port, addr="0.0.0.0", registry=self.registry)
