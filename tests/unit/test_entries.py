"""The one entry schema (cdc/streams/entries.py): every builder writes its fields in the order
the field lists name them, each value from the attribute of that name."""

from __future__ import annotations

from cdc.errors import EventTooLarge
from cdc.pg import lsn as lsnlib
from cdc.pipeline.deadletter import kept_payload
from cdc.pipeline.decode import OutboxEvent
from cdc.pipeline.sink import _NAMES
from cdc.streams import luascripts
from cdc.streams.entries import (
    DLQ_FIELDS,
    ENTRY_FIELDS,
    REPLAY_FIELDS,
    STREAM_FIELDS,
    dead_entry,
    relay_entry,
)
from cdc.streams.republish import Row


def event(**extra: str) -> OutboxEvent:
    """Return an event whose every text attribute holds its own name, so misplacing shows."""
    ev = OutboxEvent("event_id", "tenant_id", "aggregate_type", "aggregate_id", "event_type",
                     '{"payload": 1}', "created_at", 0x16B3748, 7, key="key",
                     idempotency_key="idempotency_key", **extra)
    return ev


def test_a_relay_entry_is_the_dedup_key_then_entry_fields_in_order() -> None:
    ev = event()
    entry = relay_entry(ev)
    assert entry[0] == "key" and len(entry) == 1 + len(ENTRY_FIELDS)
    fields = dict(zip(ENTRY_FIELDS, entry[1:], strict=True))
    assert fields.pop("commit_lsn") == lsnlib.format(0x16B3748) == "0/16B3748"
    assert fields == {name: getattr(ev, name) for name in fields}


def test_a_traced_entry_adds_the_trace_fields_and_the_commit_text_is_kept() -> None:
    ev = event(traceparent="00-aa-bb-01", tracestate="k=v", commit_lsn_text="0/16B3748")
    entry = relay_entry(ev)
    fields = dict(zip(STREAM_FIELDS, entry[1:], strict=True))
    assert fields["traceparent"] == "00-aa-bb-01" and fields["tracestate"] == "k=v"
    assert fields["event_type"] == "event_type" and fields["commit_lsn"] == "0/16B3748"


def test_a_dead_entry_keeps_a_prefix_of_an_oversized_payload_and_says_why() -> None:
    ev = event(traceparent="00-aa-bb-01")  # a dead letter carries no trace fields
    ev.payload = '{"blob": "' + "x" * 10_000 + '"}'
    err = EventTooLarge("too big", size=len(ev.payload))
    payload, size, cut = kept_payload(ev, err)
    entry = dead_entry(ev, payload=payload, error=str(err), stream="s", size=size, cut=cut)
    fields = dict(zip(DLQ_FIELDS, entry[1:], strict=True))
    assert entry[0] == "key" and fields["event_id"] == "event_id"
    assert fields["payload"] == ev.payload[:4096] and fields["payload_truncated"] == "1"
    assert fields["payload_bytes"] == str(len(ev.payload))
    assert fields["error"] == "too big" and fields["original_stream"] == "s"


def test_a_replay_entry_is_the_event_id_then_replay_fields_in_order() -> None:
    row = Row("e1", "CASE_CREATED", "case", "c1", "t1", '{"idempotency_key": 12.50}',
              "2026-12-01 10:00:00+00")
    entry = row.entry("dlq")
    assert entry[0] == "e1"
    fields = dict(zip(REPLAY_FIELDS, entry[1:], strict=True))
    assert fields == {
        "event_id": "e1", "event_type": "CASE_CREATED", "aggregate_type": "case",
        "aggregate_id": "c1", "tenant_id": "t1", "payload": '{"idempotency_key": 12.50}',
        "idempotency_key": "12.50", "created_at": "2026-12-01 10:00:00+00", "commit_lsn": "",
        "replay": "dlq",
    }


def test_the_sink_sends_the_field_lists_of_the_schema() -> None:
    assert _NAMES[STREAM_FIELDS] == (luascripts.pack(STREAM_FIELDS), len(ENTRY_FIELDS))
    assert _NAMES[DLQ_FIELDS] == (luascripts.pack(DLQ_FIELDS), len(DLQ_FIELDS))
    assert STREAM_FIELDS[: len(ENTRY_FIELDS)] == DLQ_FIELDS[: len(ENTRY_FIELDS)] == ENTRY_FIELDS
