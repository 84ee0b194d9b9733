"""Example consumers of the seed's two groups, small enough to copy.

- `watch_cep_group` (Watch CEP): counts alerts per watch and flags a burst when one watch
  raises `burst` HIGH/CRITICAL alerts within `window_s` seconds.
- `synapse_group` (Synapse process mining): builds a trace per (tenant, aggregate) — its
  event types in stream order — and the directly-follows counts between event types.

`run_example(group, stream, redis_url=..., stop=...)` runs one of them as a real consumer
(cdc.consumers.worker.Consumer, dedup on; `ordered=True` on a partitioned route) until `stop` is
set; `on_entry(entry, summary)` is called after each entry is handled, with a one-line
summary of what the example made of it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from typing import Protocol

from cdc.consumers.worker import Consumer, ConsumerStats, Entry
from cdc.streams import urls

log = logging.getLogger(__name__)
OnEntry = Callable[[Entry, str], None]


class Analyzer(Protocol):
    """What an example does with one entry: return a one-line summary."""

    def __call__(self, entry: Entry) -> str: ...


class WatchCep:
    """Flag alert bursts per watch: `burst` severe alerts inside `window_s` seconds."""

    SEVERE = frozenset({"HIGH", "CRITICAL"})

    def __init__(self, *, window_s: float = 60.0, burst: int = 3) -> None:
        self.window_s = window_s
        self.burst = burst
        self.alerts: Counter[str] = Counter()
        self.recent: defaultdict[str, deque[float]] = defaultdict(deque)
        self.bursts: list[str] = []

    def __call__(self, entry: Entry) -> str:
        """Count the alert; return a summary, saying BURST when the window fills."""
        payload = entry.payload()
        if not isinstance(payload, dict):
            return f"{entry.event_type}: not an alert"
        watch = str(payload.get("watch_id", entry.fields.get("aggregate_id", "?")))
        severity = str(payload.get("severity", "")).upper()
        self.alerts[watch] += 1
        line = f"{entry.event_type} watch={watch} severity={severity or '-'}"
        if severity in self.SEVERE:
            now, window = time.monotonic(), self.recent[watch]
            window.append(now)
            while window and now - window[0] > self.window_s:
                window.popleft()
            if len(window) >= self.burst:
                self.bursts.append(watch)
                window.clear()
                line += f" BURST ({self.burst} severe alerts within {self.window_s:g}s)"
        return line


class SynapseMiner:
    """Build per-aggregate traces and directly-follows counts from core events."""

    def __init__(self) -> None:
        self.traces: defaultdict[tuple[str, str], list[str]] = defaultdict(list)
        self.follows: Counter[tuple[str, str]] = Counter()

    def __call__(self, entry: Entry) -> str:
        """Append the event to its aggregate's trace; return the trace so far."""
        f = entry.fields
        case = (f.get("tenant_id", ""), f.get("aggregate_id", ""))
        trace = self.traces[case]
        if trace:
            self.follows[(trace[-1], entry.event_type)] += 1
        trace.append(entry.event_type)
        tail = " > ".join(trace[-4:])
        return f"{case[0]}/{case[1]}: {len(trace)} events ({tail})"


EXAMPLES: dict[str, Callable[[], Analyzer]] = {
    "watch_cep_group": WatchCep,
    "synapse_group": SynapseMiner,
}


def run_example(
    group: str,
    stream: str,
    *,
    redis_url: urls.Url,
    stop: threading.Event,
    on_entry: OnEntry | None = None,
    consumer: str | None = None,
    limit: int | None = None,
    timeout: float | None = None,
    analyzer: Analyzer | None = None,
    ordered: bool = False,
) -> ConsumerStats:
    """Run the example consumer of `group` on `stream` until `stop`, `limit` or `timeout`.

    `ordered=True` for a partitioned route: run as many as you like, each owns a share of
    the partitions and sees each aggregate's events in commit order (Synapse's traces).
    """
    if analyzer is None:
        if group not in EXAMPLES:
            raise ValueError(f"no example consumer for group {group}; known: {sorted(EXAMPLES)}")
        analyzer = EXAMPLES[group]()
    report = on_entry or (lambda e, line: log.info("%s %s: %s", group, e.id, line))
    worker = analyzer

    def handle(entry: Entry) -> None:
        report(entry, worker(entry))

    c = Consumer(
        redis_url=redis_url, group=group, streams=[stream], handler=handle,
        consumer=consumer or f"{group}-example", dedup=True, block_ms=200,
        claim_idle_ms=5_000, ordered=ordered, stop=stop,
    )
    try:
        return c.run(limit=limit, timeout=timeout)
    finally:
        c.close()
