"""Republish outbox rows outside the relay (DLQ replay, time-range replay), deduplicated by a set.

The relay's per-stream high-water mark (lua/publish.lua) is already past these events,
so they go through lua/replay.lua instead: SADD the event id into a set, XADD only when
it was new, in one atomic step. Every such entry carries a `replay` field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from cdc import luascripts
from cdc.contracts import key_text
from cdc.redisconn import redis_errors
from cdc.sink import ENTRY_FIELDS

REPLAY_FIELDS = (*ENTRY_FIELDS, "replay")
REPLAY_LUA = luascripts.source("replay")


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
    dlq_entry: str = ""  # its entry in axiom:dlq:events, deleted when republished

    def values(self, replay: str) -> list[str]:
        """Return the entry's values in REPLAY_FIELDS order."""
        try:
            body: Any = orjson.loads(self.payload)
        except orjson.JSONDecodeError:
            body = None
        idem = body.get("idempotency_key") if isinstance(body, dict) else None
        return [
            self.event_id, self.event_type, self.aggregate_type, self.aggregate_id,
            self.tenant_id, self.payload, key_text(idem, self.payload), self.created_at,
            "", replay,
        ]


class Republisher:
    """Put rows back on streams, each event id at most once per `set_key`."""

    def __init__(
        self, client: redis.Redis, *, set_key: str, maxlen: int = 0, ttl_s: int = 0,
        dlq_stream: str | None = None,
    ) -> None:
        self._client = client
        self._set_key = set_key
        self._maxlen = maxlen
        self._ttl = ttl_s
        self._dlq = dlq_stream
        with redis_errors("SCRIPT LOAD"):
            self._sha = str(client.script_load(REPLAY_LUA))

    def publish(self, stream: str, rows: Sequence[Row], replay: str) -> list[str]:
        """Republish `rows` on `stream` tagged `replay`; return the event ids added now."""
        if not rows:
            return []
        entries = [[r.event_id, r.dlq_entry, *r.values(replay)] for r in rows]
        keys = [stream, self._set_key, *([self._dlq] if self._dlq else [])]
        with redis_errors("EVALSHA replay"):
            added = self._client.evalsha(
                self._sha, len(keys), *keys, self._maxlen, luascripts.pack(REPLAY_FIELDS),
                luascripts.pack(entries), self._ttl,
            )
        return [str(a) for a in added]
