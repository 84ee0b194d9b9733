"""The plain consumer's steps: read new entries of every stream, reclaim idle ones.

    XREADGROUP ... BLOCK     new entries for this consumer, every stream in one command
    XAUTOCLAIM               entries pending longer than `claim_idle_ms` (a dead or slow
                             consumer, or a failed handler) are taken over and handled again

On a Redis Cluster one command may only touch one slot: streams in several slots are read
by one pipeline of XREADGROUPs without BLOCK (one round trip per master, in parallel); when
none had anything the consumer waits CLUSTER_POLL_MS (or less) and reads again, so an idle
consumer of S slots sends S reads every CLUSTER_POLL_MS. Streams in one slot (one stream,
or names sharing a hash tag) keep the single blocking XREADGROUP.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.crc import key_slot

from cdc.consumers.entry import Entry
from cdc.consumers.handling import Handling
from cdc.consumers.steps import Call, Pipe, Sleep, Steps

log = logging.getLogger(__name__)
CLUSTER_POLL_MS = 50


def by_slot(streams: list[str]) -> list[list[str]]:
    """Group `streams` by Redis Cluster slot, in their order."""
    groups: dict[int, list[str]] = {}
    for s in streams:
        groups.setdefault(key_slot(s.encode()), []).append(s)
    return list(groups.values())


class PlainSteps(Handling):
    """Reading and reclaiming every stream of the group, as Steps."""

    def _plain_step(self, block_ms: int) -> Steps[int]:
        n = 0
        if time.monotonic() >= self._next_claim:
            n = yield from self._claim()
        if n == 0:
            n = yield from self._read(block_ms)
        return n

    def _read(self, block_ms: int) -> Steps[int]:
        if self._slots is None:
            self._slots = by_slot(self.streams) if self.cluster else [self.streams]
        if len(self._slots) == 1:
            replies: Any = [(yield Call(
                "xreadgroup", (self.group, self.name, dict.fromkeys(self._slots[0], ">")),
                {"count": self.count, "block": block_ms},
            ))]
        else:
            replies = yield Pipe(tuple(
                Call("xreadgroup", (self.group, self.name, dict.fromkeys(streams, ">")),
                     {"count": self.count}) for streams in self._slots))
            if not any(replies):
                yield Sleep(min(block_ms, CLUSTER_POLL_MS) / 1000)
                return 0
        n = 0
        for reply in replies:
            for stream, entries in reply or []:
                batch = [Entry(stream, eid, f or {}) for eid, f in entries]
                yield from self._handle(batch)
                n += len(batch)
        return n

    def _claim(self) -> Steps[int]:
        """Take over entries idle for `claim_idle_ms`; handle or dead-letter them."""
        n = 0
        done = True
        for stream in self.streams:
            claimed: Any = yield Call(
                "xautoclaim", (stream, self.group, self.name, self.claim_idle_ms),
                {"start_id": self._cursor.get(stream, "0-0"), "count": self.count},
            )
            nxt, entries, *rest = claimed
            self._cursor[stream] = nxt
            if nxt != "0-0":
                done = False
            if rest and rest[0]:
                log.info("%d pending entries of %s were trimmed away", len(rest[0]), stream)
            live = [(eid, f) for eid, f in entries if f is not None]
            if not live:
                continue
            self.stats.claimed += len(live)
            rows: Any = yield Call("xpending_range", (
                stream, self.group, live[0][0], live[-1][0], len(live) * 2, self.name))
            counts = {str(r["message_id"]): int(r["times_delivered"]) for r in rows}
            yield from self._handle([Entry(stream, eid, f, counts.get(eid, 2)) for eid, f in live])
            n += len(live)
        if done:
            self._next_claim = time.monotonic() + max(self.claim_idle_ms / 2000, 0.05)
            yield from self.dedup_set.prune(self.streams)
        return n
