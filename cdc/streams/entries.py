"""The one entry schema: field names, their order, and the builders of every entry we write.

A relay entry is ENTRY_FIELDS, then the trace context when the event has one (STREAM_FIELDS:
lua/publish.lua writes as many fields as the entry has values). A dead letter adds why and
where it was going (DLQ_FIELDS); a republished event adds its `replay` tag (REPLAY_FIELDS).
The builders return [dedup key or event id, *values in that order]: the first value is what
the Lua scripts deduplicate by and is not written as a field.

Nothing here imports the pipeline: an event is anything with the OutboxEvent attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cdc.pg import lsn as lsnlib

if TYPE_CHECKING:
    from cdc.pipeline.decode import OutboxEvent

ENTRY_FIELDS = (
    "event_id", "event_type", "aggregate_type", "aggregate_id", "tenant_id",
    "payload", "idempotency_key", "created_at", "commit_lsn",
)
TRACE_FIELDS = ("traceparent", "tracestate")
STREAM_FIELDS = (*ENTRY_FIELDS, *TRACE_FIELDS)
DLQ_FIELDS = (*ENTRY_FIELDS, "error", "original_stream", "payload_bytes", "payload_truncated")
REPLAY_FIELDS = (*ENTRY_FIELDS, "replay")

PAYLOAD_AT = 1 + ENTRY_FIELDS.index("payload")  # in a built entry: after the dedup key


def relay_entry(ev: OutboxEvent) -> list[str]:
    """Return [dedup key, *values in STREAM_FIELDS order] (no trace fields when untraced).

    Each field but commit_lsn is the event's attribute of that name, written out in
    ENTRY_FIELDS order (tests/unit/test_entries.py holds the two together): the literal
    costs a third of building it from the names, on the relay's hot path.
    """
    values = [
        ev.key, ev.event_id, ev.event_type, ev.aggregate_type, ev.aggregate_id, ev.tenant_id,
        ev.payload, ev.idempotency_key, ev.created_at,
        ev.commit_lsn_text or lsnlib.format(ev.commit_lsn),
    ]
    if ev.traceparent:
        values += (ev.traceparent, ev.tracestate)
    return values


def dead_entry(
    ev: OutboxEvent, *, payload: str, error: str, stream: str, size: int, cut: bool
) -> list[str]:
    """Return [dedup key, *values in DLQ_FIELDS order]; `payload` is what the DLQ keeps."""
    values = relay_entry(ev)[: 1 + len(ENTRY_FIELDS)]
    values[PAYLOAD_AT] = payload
    return [*values, error, stream, str(size), "1" if cut else "0"]


def replay_entry(replay: str, **fields: str) -> list[str]:
    """Return [event id, *values in REPLAY_FIELDS order] from the fields named by keyword.

    `replay` tags the entry; commit_lsn, unknown outside the relay, is left empty.
    """
    fields["replay"] = replay
    fields.setdefault("commit_lsn", "")
    return [fields["event_id"], *(fields[name] for name in REPLAY_FIELDS)]
