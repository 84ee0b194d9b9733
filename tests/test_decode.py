"""The decoder on wal2json format-version 2 messages (pure: no servers)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from cdc.errors import SourceError
from cdc.pipeline.decode import Commit, Decoder, OutboxEvent, dedup_key

TS = "2026-11-26 12:32:07.080759+00"


def msg(**fields: Any) -> memoryview:
    """Return a message as the stream hands it over: a memoryview of JSON bytes."""
    return memoryview(orjson.dumps(fields))


def begin(lsn: str = "0/15723A8") -> memoryview:
    return msg(action="B", timestamp=TS, lsn=lsn, nextlsn="0/15723D8")


def commit(nextlsn: str = "0/15723D8") -> memoryview:
    return msg(action="C", timestamp=TS, lsn="0/15723A8", nextlsn=nextlsn)


def insert(n: int, *, payload: str | None = '{"case_id": "c1"}', order: int = 1) -> memoryview:
    """An outbox insert; `order` -1 lists the columns backwards (as after ALTER TABLE)."""
    columns = [
        {"name": "id", "value": f"00000000-0000-0000-0000-{n:012d}"},
        {"name": "tenant_id", "value": "t1"},
        {"name": "aggregate_type", "value": "case"},
        {"name": "aggregate_id", "value": f"case-{n}"},
        {"name": "event_type", "value": "CASE_CREATED"},
        {"name": "payload", "value": payload},
        {"name": "status", "value": "PENDING"},
        {"name": "created_at", "value": TS},
        {"name": "published_at", "value": None},
        {"name": "retry_count", "value": 0},
        {"name": "last_error", "value": None},
    ][::order]
    return msg(action="I", timestamp=TS, lsn="0/1571D78", schema="public",
               table="event_outbox", columns=columns)


def test_a_transaction_decodes_to_positioned_events_and_a_commit() -> None:
    d = Decoder(epoch=7)
    assert d.feed(begin()) is None and d.in_transaction
    first, second = d.feed(insert(1)), d.feed(insert(2, order=-1))
    assert isinstance(first, OutboxEvent) and isinstance(second, OutboxEvent)
    assert (first.event_id, first.aggregate_id, first.payload) == (
        "00000000-0000-0000-0000-000000000001", "case-1", '{"case_id": "c1"}'
    )
    assert second.aggregate_id == "case-2"  # found by name whatever the column order
    assert (first.commit_lsn, first.position, second.position) == (0x15723A8, 1, 2)
    assert first.commit_lsn_text == "0/15723A8" and first.commit_time == TS
    assert first.key == dedup_key(7, 0x15723A8, 1) < second.key
    end = d.feed(commit())
    assert end == Commit(0x15723D8) and not d.in_transaction


def test_the_layout_is_learned_again_when_columns_are_added_or_renamed() -> None:
    """A column added (the count changes) is learned again; a renamed one is not needed."""
    def altered(n: int, change: str) -> memoryview:
        if change == "added":  # ALTER TABLE ADD COLUMN traceparent, tracestate: at the end
            return memoryview(traced_insert(n, f"00-{n:032x}-{n:016x}-01", "k=v"))
        data = orjson.loads(bytes(insert(n)))
        data["columns"][10]["name"] = "note"  # renamed last_error: the same count and positions
        return memoryview(orjson.dumps(data))

    d = Decoder()
    d.feed(begin())
    plain = d.feed(insert(1))
    assert isinstance(plain, OutboxEvent) and plain.traceparent == ""
    for n, change in enumerate(("added", "renamed"), start=2):
        ev = d.feed(altered(n, change))
        assert isinstance(ev, OutboxEvent) and ev.aggregate_id == f"case-{n}", change
        assert ev.traceparent == ("" if change == "renamed" else f"00-{n:032x}-{n:016x}-01")
        assert ev.tracestate == ("k=v" if change == "added" else "")
        again = d.feed(altered(n + 10, change))  # the layout learned stays
        assert isinstance(again, OutboxEvent) and again.aggregate_id == f"case-{n + 10}"
    back = d.feed(insert(99))
    assert isinstance(back, OutboxEvent) and back.traceparent == "" and back.position == 6


def traced_insert(n: int, parent: str | None, state: str | None, *, last: bool = True) -> bytes:
    """An insert into an outbox with the trace columns (sql/009), as wal2json prints it."""
    data = orjson.loads(bytes(insert(n)))
    trace = [{"name": "traceparent", "value": parent}, {"name": "tracestate", "value": state}]
    data["columns"] = data["columns"] + trace if last else trace + data["columns"]
    return orjson.dumps(data)


def test_traced_and_untraced_inserts_share_one_layout_wherever_the_trace_columns_sit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    learned: list[int] = []
    real = Decoder._learn
    monkeypatch.setattr(Decoder, "_learn", lambda self, cols: learned.append(len(cols))
                        or real(self, cols))
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    d = Decoder()
    d.feed(begin())
    cases = [(None, None), (tp, "k=v"), (None, None), (tp, None), (None, "k=v"), (None, None)]
    for n, (parent, state) in enumerate(cases, start=1):
        data = traced_insert(n, parent, state)
        ev = d.feed(memoryview(data))
        assert isinstance(ev, OutboxEvent) and ev.aggregate_id == f"case-{n}"
        assert (ev.traceparent, ev.tracestate) == (parent or "", (state or "") if parent else "")
        assert ev.position == n and ev.payload == '{"case_id": "c1"}'
    assert learned == [13]  # once: traced or not, the layout holds
    # trace columns first (a table of one's own): read by name all the same
    d = Decoder()
    d.feed(begin())
    for n, (parent, state) in enumerate(cases, start=1):
        ev = d.feed(traced_insert(n, parent, state, last=False))
        assert isinstance(ev, OutboxEvent) and ev.traceparent == (parent or "")
        assert ev.aggregate_id == f"case-{n}"
    assert learned == [13, 13]


def test_a_same_count_change_that_moves_id_or_payload_is_learned_again() -> None:
    """DROP + ADD of a column at the same count moves it: the names checked per insert see it."""
    def moved(n: int, name: str) -> memoryview:
        data = orjson.loads(bytes(insert(n)))
        cols = data["columns"]
        i = next(i for i, c in enumerate(cols) if c["name"] == name)
        cols.append(cols.pop(i))  # dropped, then added again: now the last column
        return memoryview(orjson.dumps(data))

    d = Decoder()
    d.feed(begin())
    assert isinstance(d.feed(insert(1)), OutboxEvent)
    for n, name in enumerate(("payload", "id"), start=2):
        ev = d.feed(moved(n, name))
        assert isinstance(ev, OutboxEvent), name
        assert ev.event_id == f"00000000-0000-0000-0000-{n:012d}", name
        assert ev.payload == '{"case_id": "c1"}' and ev.aggregate_id == f"case-{n}", name


def test_a_trace_column_printed_otherwise_than_wal2json_still_reads_as_its_value() -> None:
    """Untraced inserts are recognised by wal2json's exact NULL text; any other text is decoded."""
    d = Decoder()
    d.feed(begin())
    tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    spaced = traced_insert(1, None, None).replace(
        b'{"name":"traceparent","value":null}', b'{"name": "traceparent", "value": null}')
    assert b'"value": null}' in spaced
    ev = d.feed(memoryview(spaced))
    assert isinstance(ev, OutboxEvent) and (ev.traceparent, ev.tracestate) == ("", "")
    ev = d.feed(memoryview(traced_insert(2, tp, None)))
    assert isinstance(ev, OutboxEvent) and (ev.traceparent, ev.tracestate) == (tp, "")
    ev = d.feed(memoryview(traced_insert(3, "", "k=v")))  # passed on; entries need a parent
    assert isinstance(ev, OutboxEvent) and (ev.traceparent, ev.tracestate) == ("", "k=v")


def test_dedup_keys_stay_in_order_across_positions_256_apart() -> None:
    d = Decoder(epoch=1)
    d.feed(begin())
    keys = []
    for n in range(1, 600):
        ev = d.feed(insert(n))
        assert isinstance(ev, OutboxEvent)
        keys.append(ev.key)
    assert keys == [dedup_key(1, 0x15723A8, p) for p in range(1, 600)]
    assert keys == sorted(keys)


def test_a_null_payload_becomes_json_null() -> None:
    d = Decoder()
    d.feed(begin())
    ev = d.feed(insert(1, payload=None))
    assert isinstance(ev, OutboxEvent) and ev.payload == "null"


def test_other_messages_are_skipped() -> None:
    d = Decoder()
    # A non-transactional logical message, as wal2json 2.5 writes it (a heartbeat tool's
    # pg_logical_emit_message(false, ...)): null timestamp, no nextlsn.
    heartbeat = (b'{"action":"M","timestamp":null,"lsn":"0/1571E20","transactional":false,'
                 b'"prefix":"heartbeat","content":"x"}')
    assert d.feed(memoryview(heartbeat)) is None and not d.in_transaction
    d.feed(begin())
    assert d.feed(msg(action="M", timestamp=TS, lsn="0/1571E58", transactional=True,
                      prefix="p", content="x")) is None
    assert d.feed(msg(action="T", schema="public", table="event_outbox")) is None
    assert d.in_transaction


@pytest.mark.parametrize(
    "data",
    [b"{not json", b'{"lsn": "0/1"}', b'{"action": 1}', b'{"action": "B"}',
     b'{"action": "C", "lsn": "0/1"}', b"[]"],
    ids=["not-json", "no-action", "action-not-text", "begin-without-lsn",
         "commit-without-nextlsn", "not-an-object"],
)
def test_malformed_messages_raise_source_error(data: bytes) -> None:
    with pytest.raises(SourceError, match="unexpected wal2json output"):
        Decoder().feed(memoryview(data))


def test_an_insert_into_another_table_layout_names_the_setting() -> None:
    d = Decoder()
    d.feed(begin())
    other = msg(action="I", columns=[{"name": "id", "value": "1"}, {"name": "x", "value": 2}])
    with pytest.raises(SourceError, match="CDC_OUTBOX_TABLE"):
        d.feed(other)


def test_an_outbox_column_that_is_not_text_is_refused_with_the_schema() -> None:
    d = Decoder()
    d.feed(begin())
    columns = orjson.loads(bytes(insert(1)))["columns"]
    columns[3]["value"] = 18446744073709551615  # aggregate_id as a numeric column would send
    with pytest.raises(SourceError, match=r"aggregate_id \(int\) do not arrive as text") as e:
        d.feed(msg(action="I", columns=columns))
    assert "NOT NULL" in e.value.hint
