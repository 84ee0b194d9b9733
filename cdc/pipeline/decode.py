"""wal2json format-version 2 messages → outbox events with their commit position."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from cdc.errors import SourceError
from cdc.pg import lsn as lsnlib

COLUMNS = ("id", "tenant_id", "aggregate_type", "aggregate_id", "event_type", "payload",
           "created_at")
TRACE_COLUMNS = ("traceparent", "tracestate")  # optional (sql/009); NULL when untraced
# A dedup key ends in the position as 8 hex digits: the last two come from this table and
# the rest change once every 256 events, so no event pays for format().
_HEX2 = tuple(f"{i:02x}" for i in range(256))


class _Column(msgspec.Struct, gc=False):
    """One column of an insert: its name and JSON-typed value."""

    name: str
    value: Any = None


class _Message(msgspec.Struct, gc=False):
    """The wal2json v2 message fields we read; the others are skipped.

    Optional, and nullable: a non-transactional logical message (`M`) has no nextlsn and a
    null timestamp, and must pass through like any other message we do not use.
    """

    action: str
    lsn: str | None = None
    nextlsn: str | None = None
    timestamp: str | None = None
    columns: list[_Column] = []


# Every column named: read to learn an insert's layout (the first insert, or after DDL).
_decode_named = msgspec.json.Decoder(_Message).decode
_decode_column = msgspec.json.Decoder(_Column).decode


# Once the layout is known, inserts decode into a fixed-length tuple typed per position, so
# no column name is allocated. A column count that changed, or `id`/`payload` not where they
# were, fails validation and the layout is learned again. A column we do not read stays
# msgspec.Raw (bytes skipped, nothing built); a trace column too, compared whole with its NULL
# form, so untraced events (most) pay no more than the bytes msgspec skips.
class _Value(msgspec.Struct, gc=False):
    """A column read by position: its name was checked when the layout was learned."""

    value: Any = None


class _Id(msgspec.Struct, gc=False):
    """The `id` column, its name checked on every insert."""

    name: Literal["id"]
    value: Any = None


class _Payload(msgspec.Struct, gc=False):
    """The `payload` column, its name checked on every insert."""

    name: Literal["payload"]
    value: Any = None


_CHECKED: dict[str, Any] = {"id": _Id, "payload": _Payload}
# A NULL traceparent as wal2json prints it: {"name":"traceparent","value":null}
_NULL_TRACEPARENT = msgspec.Raw(msgspec.json.encode(_Column(TRACE_COLUMNS[0])))


def _layout_decoder(names: list[str]) -> Callable[[memoryview | bytes], Any]:
    """Return a decoder for inserts whose columns are `names`, in this order."""
    kinds = tuple(_CHECKED.get(name, _Value if name in COLUMNS else msgspec.Raw)
                  for name in names)
    insert = msgspec.defstruct(
        "_Insert",
        [("action", str), ("lsn", str | None, None), ("nextlsn", str | None, None),
         ("timestamp", str | None, None), ("columns", tuple[kinds], ())],  # type: ignore[valid-type]
        gc=False,
    )
    return msgspec.json.Decoder(insert).decode


# Before the first insert: any insert fails validation, which sends it to be learned.
_decode_unlearned = _layout_decoder([])


def _trace_context(cols: tuple[Any, ...], i_trace: int, i_state: int) -> tuple[str, str]:
    """Return (traceparent, tracestate) of a traced insert, read from their raw columns."""
    parent = _decode_column(cols[i_trace]).value
    state = _decode_column(cols[i_state]).value if i_state >= 0 else None
    return ("" if parent is None else str(parent)), ("" if state is None else str(state))


@dataclass(slots=True)
class OutboxEvent:
    """One `event_outbox` insert, positioned by (commit_lsn, position in the transaction)."""

    event_id: str
    tenant_id: str
    aggregate_type: str
    aggregate_id: str
    event_type: str
    payload: str  # JSON text, as the jsonb column holds it
    created_at: str
    commit_lsn: int
    position: int
    commit_time: str = ""
    commit_lsn_text: str = ""
    idempotency_key: str = ""
    key: str = ""  # dedup_key(epoch, commit_lsn, position)
    traceparent: str = ""  # W3C trace context of the producer, "" when untraced
    tracestate: str = ""


def key_prefix(epoch: int, commit_lsn: int) -> str:
    """Return the part of a dedup key shared by one transaction's events."""
    return f"{epoch:014x}:{commit_lsn:016x}:"


def dedup_key(epoch: int, commit_lsn: int, position: int) -> str:
    """Return the dedup key: fixed-width hex, so string order is (epoch, lsn, position).

    The epoch (the slot's creation time) keeps a re-created slot — after a failover
    to a standby whose WAL is behind — from being mistaken for a replay.
    """
    return f"{key_prefix(epoch, commit_lsn)}{position:08x}"


@dataclass(slots=True)
class Commit:
    """The end of a transaction: everything before `end_lsn` is decoded."""

    end_lsn: int


class Decoder:
    """Turn the stream's JSON messages into events; remember the open transaction."""

    def __init__(self, *, epoch: int = 0) -> None:
        self.epoch = epoch
        self.in_transaction = False
        self._commit_lsn = 0
        self._commit_text = ""
        self._prefix = ""
        self._time = ""
        self._position = 0
        self._block = 0  # position >> 8 ...
        self._block_prefix = "000000"  # ... and the dedup key up to the last two hex digits
        # Where the COLUMNS, then traceparent and tracestate (-1: no such column), sit in an
        # insert's column list, learned from their names.
        self._layout: tuple[int, ...] = (0,) * len(COLUMNS) + (-1, -1)
        self._decode = _decode_unlearned

    def feed(self, data: memoryview | bytes) -> OutboxEvent | Commit | None:
        """Decode one message; return an event, a commit, or None for a begin."""
        # Inserts are nearly every message: they are decoded inline, without helper calls.
        try:
            try:
                msg = self._decode(data)
            except msgspec.ValidationError:
                msg = self._relearn(data)
            if msg.action != "I":
                return self._control(msg)
            cols = msg.columns
            i_id, i_tenant, i_agg_type, i_agg_id, i_type, i_payload, i_created, i_trace, i_state = (
                self._layout
            )
            self._position = position = self._position + 1
            if position >> 8 != self._block:
                self._block = position >> 8
                self._block_prefix = f"{self._prefix}{position >> 8:06x}"
            payload = cols[i_payload].value
            ev = OutboxEvent(
                cols[i_id].value, cols[i_tenant].value, cols[i_agg_type].value,
                cols[i_agg_id].value, cols[i_type].value,
                payload if payload is not None else "null", cols[i_created].value,
                self._commit_lsn, position, self._time, self._commit_text, "",
                self._block_prefix + _HEX2[position & 0xFF],
            )
            if i_trace >= 0 and cols[i_trace] != _NULL_TRACEPARENT:
                ev.traceparent, ev.tracestate = _trace_context(cols, i_trace, i_state)
            return ev
        except (
            msgspec.DecodeError, KeyError, ValueError, TypeError, IndexError, RecursionError
        ) as e:
            raise SourceError(f"unexpected wal2json output: {e!r}") from None

    def _relearn(self, data: memoryview | bytes) -> Any:
        """Decode an insert the layout decoder refused: learn its columns, then decode it."""
        msg = _decode_named(data)
        if msg.action != "I":
            return msg
        self._learn(msg.columns)
        return self._decode(data)

    def _control(self, msg: _Message) -> Commit | None:
        """Track transaction boundaries: B opens one, C closes it."""
        action = msg.action
        if action == "B":
            if msg.lsn is None:
                raise ValueError("a begin without lsn")
            self.in_transaction = True
            self._commit_text = msg.lsn
            self._commit_lsn = lsnlib.parse(self._commit_text)
            self._prefix = key_prefix(self.epoch, self._commit_lsn)
            self._time = msg.timestamp or ""
            self._position = self._block = 0
            self._block_prefix = self._prefix + "000000"
            return None
        if action == "C":
            if msg.nextlsn is None:
                raise ValueError("a commit without nextlsn")
            self.in_transaction = False
            return Commit(lsnlib.parse(msg.nextlsn))
        return None  # M (logical messages), T (truncate) and others: not outbox inserts

    def _learn(self, cols: list[_Column]) -> None:
        """Find the outbox columns by name (first insert, or after ALTER TABLE)."""
        index = {c.name: i for i, c in enumerate(cols)}
        missing = [name for name in COLUMNS if name not in index]
        if missing:
            raise SourceError(
                f"outbox insert lacks column(s) {', '.join(missing)}:"
                " is CDC_OUTBOX_TABLE the outbox table?"
            )
        # A column's JSON type follows its SQL type, so the first insert tells for all: stream
        # fields must be text (a number would reach Redis' Lua as a double, or overflow).
        wrong = [
            f"{name} ({type(cols[index[name]].value).__name__})"
            for name in COLUMNS
            if name != "payload" and type(cols[index[name]].value) is not str
        ]
        if wrong:
            raise SourceError(
                f"outbox column(s) {', '.join(wrong)} do not arrive as text:"
                " is CDC_OUTBOX_TABLE the outbox table?",
                hint="id uuid, created_at timestamptz, the others text, all NOT NULL"
                " (sql/001_event_outbox.sql)",
            )
        self._layout = tuple(index[name] for name in COLUMNS) + tuple(
            index.get(name, -1) for name in TRACE_COLUMNS)
        self._decode = _layout_decoder(list(index))
