"""Batches to Redis: check each event (size, contract, route), group by stream, send; ack.

An event that fails its check goes to `Failures` (retried, then dead-lettered: its DLQ
entry travels in the same batch). The relay loop and the backfill both publish through
here; what is marked PUBLISHED after an ack is their Marker's business, not this one's.
"""

from __future__ import annotations

import time
from datetime import datetime

from cdc.errors import Action, EventError, policy
from cdc.observe.metrics import Metrics
from cdc.pipeline.checkpoint import Batch
from cdc.pipeline.contracts import Registry, check_event
from cdc.pipeline.deadletter import SKIP, kept_payload
from cdc.pipeline.decode import OutboxEvent
from cdc.pipeline.route import Router
from cdc.pipeline.stages import Failures, Sink
from cdc.streams import keys
from cdc.streams.entries import DLQ_FIELDS, dead_entry, relay_entry


class Prepare:
    """Validate an event (size, contract, route); note its idempotency key."""

    def __init__(self, router: Router, registry: Registry, *, max_bytes: int) -> None:
        self.router = router
        self.registry = registry
        self.max_bytes = max_bytes

    def check(self, ev: OutboxEvent) -> str:
        """Return the event's stream, or raise EventError."""
        ev.idempotency_key = check_event(
            self.registry, ev.event_type, ev.payload, self.max_bytes
        )
        return self.router.stream_for(ev.event_type, ev.tenant_id, ev.aggregate_id)

    def stream_or_none(self, ev: OutboxEvent) -> str:
        """Return where the event would have gone ("" when no rule routes it)."""
        try:
            return self.router.stream_for(ev.event_type, ev.tenant_id, ev.aggregate_id)
        except EventError:
            return ""


def commit_age(commit_time: str, now: float | None = None) -> float:
    """Return seconds since a wal2json commit timestamp ('2026-01-01 10:00:00.1+00')."""
    try:
        then = datetime.fromisoformat(commit_time).timestamp()
    except ValueError:
        return 0.0
    return (time.time() if now is None else now) - then


class Publisher:
    """Turn batches into Redis commands (`send`) and read their replies in order (`ack`)."""

    def __init__(
        self, prepare: Prepare, sink: Sink, failures: Failures, metrics: Metrics
    ) -> None:
        self.prepare = prepare
        self.sink = sink
        self.failures = failures
        self.metrics = metrics

    def send(self, batch: Batch) -> None:
        """Check and send every event of `batch`; failures go to the DLQ in the same batch."""
        by_stream: dict[str, list[list[str]]] = {}
        names: dict[str, tuple[str, ...]] = {}
        check = self.prepare.check
        published = batch.published_ids.append
        for ev in batch.events:
            try:
                stream = check(ev)
            except EventError as e:
                if policy(e) is not Action.DEAD_LETTER:  # errors.policy decides, here too
                    raise
                maybe = self._failed(ev, e, by_stream, names)
                if maybe is None:
                    continue
                stream = maybe
            entries = by_stream.get(stream)
            if entries is None:
                entries = by_stream[stream] = []
            entries.append(relay_entry(ev))
            published(ev.event_id)
        batch.replies = self.sink.send(by_stream, names) if by_stream else ()

    def _failed(
        self, ev: OutboxEvent, error: EventError, by_stream: dict[str, list[list[str]]],
        names: dict[str, tuple[str, ...]],
    ) -> str | None:
        """Retry or dead-letter `ev`; return its stream when a retry passed, else None."""
        self.metrics.failed.inc()
        maybe = self.failures.fail(ev, error, self.prepare.check)
        if maybe is None:
            self.metrics.dead_lettered.inc()
            why = self.failures.last_error or error
            payload, size, cut = kept_payload(ev, why)
            by_stream.setdefault(keys.DLQ, []).append(dead_entry(
                ev, payload=payload, error=str(why), stream=self.prepare.stream_or_none(ev),
                size=size, cut=cut,
            ))
            names[keys.DLQ] = DLQ_FIELDS
            return None
        return None if maybe == SKIP else maybe

    def ack(self, batch: Batch) -> None:
        """Wait for `batch`'s replies (raise on an error reply); count what was published."""
        added = self.sink.read_replies(batch.replies)
        self.metrics.published.inc(len(batch.published_ids))
        self.metrics.duplicates.inc(max(0, len(batch.events) - added))
        if batch.events:
            age = max(0.0, commit_age(batch.events[-1].commit_time))
            self.metrics.ack_latency.observe(age)
            self.metrics.lag_seconds.set(age)
