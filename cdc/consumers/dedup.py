"""A group's handled event ids, to skip them when they come again (`dedup=True`).

    keys.consumer_seen(stream, group)         ZSET event id -> when handled (unix s), format 2
    keys.consumer_seen_format(stream, group)  "2" once format-1 ids were copied in

Format 2 keeps one set per stream in that stream's cluster slot (its name is the hash tag),
so a batch's XACK and ZADD stay one MULTI, and the check one ZMSCORE, on a Redis Cluster.
Format 1 (before) kept one set per group, `axiom:consumer:seen:<group>`, for every stream.
On its first start a consumer copies the format-1 ids younger than `dedup_ttl_s` into the
set of each of its streams (ZADD GT, so a retry after a crash is harmless), records the
format per stream, and lets the old set expire after `dedup_ttl_s`. Stop the group's
consumers of the old version before starting new ones: ids the old ones record after the
copy are not seen by the new ones.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from cdc.consumers.entry import Entry
from cdc.consumers.steps import Call, Steps
from cdc.streams import keys

log = logging.getLogger(__name__)
CHUNK = 1000


class Dedup:
    """The dedup sets of one group; every method is a no-op when `enabled` is False."""

    def __init__(self, *, group: str, ttl_s: float, enabled: bool) -> None:
        self.group = group
        self.ttl_s = ttl_s
        self.enabled = enabled
        self._keys: dict[str, str] = {}

    def key(self, stream: str) -> str:
        """Return the set of the ids handled on `stream`."""
        k = self._keys.get(stream)
        if k is None:
            k = self._keys[stream] = keys.consumer_seen(stream, self.group)
        return k

    def seen(self, batch: list[Entry]) -> Steps[set[str]]:
        """Return the event ids of `batch` (one stream's entries) already handled."""
        ids = [e.event_id for e in batch if e.event_id] if self.enabled else []
        if not ids:
            return set()
        scores: Any = yield Call("zmscore", (self.key(batch[0].stream), ids))
        return {eid for eid, score in zip(ids, scores, strict=True) if score is not None}

    def record(self, stream: str, event_ids: list[str]) -> Call | None:
        """Return the ZADD recording `event_ids` as handled on `stream` (None: nothing to)."""
        if not self.enabled or not event_ids:
            return None
        return Call("zadd", (self.key(stream), dict.fromkeys(event_ids, time.time())))

    def prune(self, streams: Sequence[str]) -> Steps[None]:
        """Forget ids handled more than `ttl_s` ago."""
        if self.enabled:
            floor = time.time() - self.ttl_s
            for stream in streams:
                yield Call("zremrangebyscore", (self.key(stream), "-inf", floor))

    def migrate(self, streams: Sequence[str]) -> Steps[int]:
        """Copy the format-1 set's live ids into each stream's set not migrated yet."""
        old = keys.consumer_seen_v1(self.group)
        if not self.enabled or not (yield Call("exists", (old,))):
            return 0
        todo = []
        for stream in streams:
            mark = yield Call("get", (keys.consumer_seen_format(stream, self.group),))
            if mark != keys.CONSUMER_SEEN_FORMAT:
                todo.append(stream)
        if not todo:
            return 0
        floor, offset = time.time() - self.ttl_s, 0
        while True:
            chunk: Any = yield Call("zrangebyscore", (old, floor, "+inf"),
                                    {"start": offset, "num": CHUNK, "withscores": True})
            if not chunk:
                break
            offset += len(chunk)
            for stream in todo:
                yield Call("zadd", (self.key(stream), dict(chunk)), {"gt": True})
        for stream in todo:
            yield Call("set", (keys.consumer_seen_format(stream, self.group),
                               keys.CONSUMER_SEEN_FORMAT))
        yield Call("expire", (old, max(1, int(self.ttl_s))), {"nx": True})
        log.info("group %s: %d handled event id(s) of %s copied to the per-stream sets of %s",
                 self.group, offset, old, ", ".join(todo))
        return offset
