"""wal2json format-version 2 messages → outbox events with their commit position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from cdc import lsn as lsnlib
from cdc.errors import SourceError


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
    idempotency_key: str = ""

    @property
    def key(self) -> str:
        """Return the dedup key: fixed-width hex so string order is (lsn, position) order."""
        return f"{self.commit_lsn:016x}:{self.position:08x}"


@dataclass(slots=True)
class Commit:
    """The end of a transaction: everything before `end_lsn` is decoded."""

    end_lsn: int
    commit_time: str
    events: int


class Decoder:
    """Turn the stream's JSON messages into events; remember the open transaction."""

    def __init__(self) -> None:
        self.in_transaction = False
        self._commit_lsn = 0
        self._end_lsn = 0
        self._time = ""
        self._position = 0

    def feed(self, data: memoryview | bytes) -> OutboxEvent | Commit | None:
        """Decode one message; return an event, a commit, or None for a begin."""
        try:
            msg: dict[str, Any] = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise SourceError(f"wal2json sent invalid JSON: {e}") from None
        action = msg.get("action")
        if action == "I":
            return self._insert(msg)
        if action == "B":
            self.in_transaction = True
            self._commit_lsn = lsnlib.parse(msg["lsn"])
            self._end_lsn = lsnlib.parse(msg["nextlsn"])
            self._time = msg.get("timestamp", "")
            self._position = 0
            return None
        if action == "C":
            self.in_transaction = False
            return Commit(lsnlib.parse(msg["nextlsn"]), msg.get("timestamp", ""), self._position)
        return None  # M (logical messages), T (truncate) and others: not outbox inserts

    def _insert(self, msg: dict[str, Any]) -> OutboxEvent:
        cols = {c["name"]: c["value"] for c in msg["columns"]}
        self._position += 1
        try:
            return OutboxEvent(
                event_id=cols["id"],
                tenant_id=cols["tenant_id"],
                aggregate_type=cols["aggregate_type"],
                aggregate_id=cols["aggregate_id"],
                event_type=cols["event_type"],
                payload=cols["payload"] if cols["payload"] is not None else "null",
                created_at=cols["created_at"],
                commit_lsn=self._commit_lsn,
                position=self._position,
                commit_time=self._time,
            )
        except KeyError as e:
            raise SourceError(
                f"outbox insert lacks column {e}: is CDC_OUTBOX_TABLE the outbox table?"
            ) from None
