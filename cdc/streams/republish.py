"""Republish outbox rows outside the relay (DLQ replay, time-range replay), deduplicated by a set.

The relay's per-stream high-water mark (lua/publish.lua) is already past these events,
so they go through lua/replay.lua instead: SADD the event id into the stream's set, XADD
only when it was new, in one atomic step. Each stream has its own set in its own hash slot
(keys.same_slot), so the step works on a Redis Cluster. An id found in the set of the
format before (`legacy`, one set for every stream, only read now) counts as republished.
Deleting a dead letter's DLQ copy is a separate step after it: XDEL of an id is idempotent.
Every republished entry carries a `replay` field.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from cdc.pipeline.contracts import key_text
from cdc.streams import luascripts
from cdc.streams.entries import REPLAY_FIELDS, replay_entry
from cdc.streams.redisconn import Client, redis_errors

REPLAY = luascripts.script("replay")


@dataclass(frozen=True, slots=True)
class Row:
    """One outbox row to put back on a stream."""

    event_id: str
    event_type: str
    aggregate_type: str
    aggregate_id: str
    tenant_id: str
    payload: str  # JSON text
    created_at: str
    dlq_entry: str = ""  # its entry in axiom:dlq:events, deleted once it is republished

    def entry(self, replay: str) -> list[str]:
        """Return [event id, *values in REPLAY_FIELDS order] (entries.replay_entry)."""
        try:
            body: Any = orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            body = None
        idem = body.get("idempotency_key") if isinstance(body, dict) else None
        return replay_entry(
            replay, event_id=self.event_id, event_type=self.event_type,
            aggregate_type=self.aggregate_type, aggregate_id=self.aggregate_id,
            tenant_id=self.tenant_id, payload=self.payload,
            idempotency_key=key_text(idem, self.payload), created_at=self.created_at,
        )


class Republisher:
    """Put rows back on streams, each event id at most once per stream's set `set_key(stream)`."""

    def __init__(
        self, client: Client, *, set_key: Callable[[str], str], maxlen: int = 0,
        ttl_s: int = 0, dlq_stream: str | None = None, legacy: str | None = None,
    ) -> None:
        self._client = client
        self._set_key = set_key
        self._maxlen = maxlen
        self._ttl = ttl_s
        self._dlq = dlq_stream
        self._legacy = legacy

    def publish(self, stream: str, rows: Sequence[Row], replay: str) -> list[str]:
        """Republish `rows` on `stream` tagged `replay`; return the event ids added now."""
        if not rows:
            return []
        todo = list(rows)
        if self._legacy is not None:  # nothing writes the old set: reading it is safe
            with redis_errors("SMISMEMBER"):
                done: Any = self._client.smismember(self._legacy, [r.event_id for r in todo])
            todo = [r for r, old in zip(todo, done, strict=True) if not old]
        added: Any = []
        if todo:
            entries = [r.entry(replay) for r in todo]
            args = (stream, self._set_key(stream), self._maxlen, luascripts.pack(REPLAY_FIELDS),
                    luascripts.pack(entries), self._ttl)
            with redis_errors("EVALSHA replay"):
                added = REPLAY(self._client, args[:2], args[2:])
        copies = [r.dlq_entry for r in rows if r.dlq_entry]
        if self._dlq is not None and copies:  # on the stream now (or before): drop the copy
            with redis_errors("XDEL"):
                self._client.xdel(self._dlq, *copies)
        return [str(a) for a in added]
