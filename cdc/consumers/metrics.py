"""The consumers' counters as Prometheus metrics (core_consumer_*_total)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields

from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from cdc.consumers.entry import ConsumerStats
from cdc.consumers.handling import Handling


class _StatsCollector(Collector):
    def __init__(self, consumers: list[Handling]) -> None:
        self.consumers = consumers

    def collect(self) -> Iterator[CounterMetricFamily]:
        for f in fields(ConsumerStats):
            family = CounterMetricFamily(
                f"core_consumer_{f.name}", f"Consumer entries: {f.name.replace('_', ' ')}",
                labels=["group", "consumer"],
            )
            for c in self.consumers:
                family.add_metric([c.group, c.name], getattr(c.stats, f.name))
            yield family


def consumer_registry(consumers: Iterable[Handling]) -> CollectorRegistry:
    """Return a registry exporting the counters of `consumers` (core_consumer_*_total)."""
    registry = CollectorRegistry()
    registry.register(_StatsCollector(list(consumers)))
    return registry
