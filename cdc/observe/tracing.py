"""W3C trace context from the producing request to the consumer's handler (OpenTelemetry).

    emit         current span -> traceparent/tracestate columns of the outbox row
    relay        the columns -> the stream entry's `traceparent`/`tracestate` fields
    consumer     the fields -> the handler runs in a CONSUMER span, child of the producer's

Optional: with `opentelemetry-api` absent (extra `axiom-cdc[otel]`), or no span current,
nothing is written and the handler runs as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

try:
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # pragma: no cover - exercised only without the extra
    trace = None  # type: ignore[assignment]
    _propagator = None
else:
    _propagator = TraceContextTextMapPropagator()

FIELDS = ("traceparent", "tracestate")


def current() -> dict[str, str]:
    """Return the current span's traceparent (and tracestate), or {} when there is none."""
    if _propagator is None:
        return {}
    carrier: dict[str, str] = {}
    _propagator.inject(carrier)
    return {k: v for k, v in carrier.items() if k in FIELDS and v}


@contextmanager
def consumer_span(fields: Mapping[str, str], *, stream: str, entry_id: str) -> Iterator[None]:
    """Run the block in a CONSUMER span whose parent is the entry's trace context, if any."""
    parent = fields.get("traceparent")
    if _propagator is None or trace is None or not parent:
        yield
        return
    carrier = {"traceparent": parent, "tracestate": fields.get("tracestate", "")}
    context = _propagator.extract(carrier)
    tracer = trace.get_tracer("cdc.consumers.worker")
    with tracer.start_as_current_span(
        f"{fields.get('event_type', 'event')} process", context=context,
        kind=trace.SpanKind.CONSUMER,
        attributes={"messaging.system": "redis", "messaging.destination.name": stream,
                    "messaging.message.id": entry_id,
                    "messaging.operation.type": "process"},
    ):
        yield
