"""Handling a batch and acknowledging it, plain or ordered: the part both modes share.

    dedup check      ZMSCORE on the stream's dedup set (dedup.py)
    handler          your code, entry by entry; an exception leaves the entry pending
    XACK (+ ZADD)    plain: one MULTI per batch (the dedup set shares the stream's slot);
                     ordered: lua/fenced.lua `ack`, refused once the lease is lost
    dead letter      lua/dlq_add.lua adds the entry to axiom:dlq:events at most once, then
                     XACK (fenced when ordered): an ack that fails leaves it pending, and the
                     retry acks it without a second DLQ copy

The failure budget: plain, an entry delivered more than `max_deliveries` times (XAUTOCLAIM
counts a delivery) is dead-lettered. Ordered, a handover (a new owner claims what the last
one left pending) is a delivery too, so the budget counts the handler's failures instead,
kept per partition in Redis (`keys.failures`, fenced) so the next owner inherits them; an
entry handed over more than HANDOVER_ALLOWANCE * `max_deliveries` times is dead-lettered
anyway (a handler that kills its process never raises).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from cdc.consumers.dedup import Dedup
from cdc.consumers.entry import ConsumerStats, Entry, default_name
from cdc.consumers.leases import Leases, Part
from cdc.consumers.steps import Call, Handle, Multi, Steps, script
from cdc.streams import keys

log = logging.getLogger(__name__)
HANDOVER_ALLOWANCE = 10
KEEP_MS = 7 * 86_400_000  # failure counts and the DLQ guard forget entries this old


class Handling:
    """Configuration, counters, and the handling and acknowledging of batches as Steps."""

    def __init__(
        self, *, group: str, streams: Sequence[str], consumer: str | None, count: int,
        block_ms: int, claim_idle_ms: int, max_deliveries: int, dedup: bool,
        dedup_ttl_s: float, start_id: str, ordered: bool, lease_ms: int,
    ) -> None:
        if not streams:
            raise ValueError("at least one stream is needed")
        self.group = group
        self.streams = list(streams)
        self.name = consumer or default_name()
        self.count = count
        self.block_ms = block_ms
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.dedup = dedup
        self.dedup_ttl_s = dedup_ttl_s
        self.start_id = start_id
        self.stats = ConsumerStats()
        self.dedup_set = Dedup(group=group, ttl_s=dedup_ttl_s, enabled=dedup)
        self.cluster: bool | None = None  # known once the driver connected
        self._errors: dict[str, str] = {}  # entry id -> last handler error (this process)
        self._next_claim = 0.0  # when to reclaim idle entries (plain) or prune (both) next
        self._cursor: dict[str, str] = {}  # plain: stream -> XAUTOCLAIM cursor
        self._slots: list[list[str]] | None = None  # plain: the streams by cluster slot
        # ordered: `streams` name routes; their partitions are owned through leases
        self.routes = list(streams) if ordered else []
        self.leases = Leases(group=group, me=self.name, lease_ms=lease_ms) if ordered else None

    def _stopped(self) -> bool:
        raise NotImplementedError

    def _halt(self, todo: Handle) -> bool:
        """Return True when the driver must run no more entries of `todo`."""
        return self._stopped() or (todo.deadline is not None
                                   and time.monotonic() >= todo.deadline)

    def _handle(self, batch: list[Entry], part: Part | None = None) -> Steps[bool]:
        """Handle a batch in order, then acknowledge what succeeded; True if all was handled.

        Ordered (`part`): the first failure ends the batch, and the partition waits
        `claim_idle_ms` before the failed entry is tried again; nothing after it runs first.
        """
        self.stats.delivered += len(batch)
        seen = yield from self.dedup_set.seen(batch)
        acks: list[str] = []
        handled_ids: list[str] = []
        pending: list[Entry] = []
        for entry in batch:
            reason = self._over_budget(entry, part)
            if reason:
                yield from self._dead_letter(entry, part, reason)
                self.stats.dead_lettered += 1
                self.stats.acked += 1
            else:
                pending.append(entry)
        complete = True
        failed: list[Entry] = []
        while pending:  # a round per copy of an event id the batch holds twice (dedup)
            todo: list[Entry] = []
            later: list[Entry] = []
            ids: set[str] = set()
            for entry in pending:
                eid = entry.event_id
                if self.dedup and eid and eid in seen:
                    self.stats.duplicates += 1
                    acks.append(entry.id)
                elif self.dedup and eid and eid in ids:
                    later.append(entry)
                else:
                    todo.append(entry)
                    ids.add(eid)
            deadline = None if part is None else part.valid_until
            errors: list[Exception | None] = (
                (yield Handle(todo, deadline, part is not None)) if todo else [])
            failed += self._results(todo, errors, acks, handled_ids, seen)
            # Stopped: what the driver did not reach stays pending; XAUTOCLAIM hands it on.
            if failed or len(errors) < len(todo):
                complete = False
                if failed and part is not None:
                    part.not_before = time.monotonic() + self.claim_idle_ms / 1000
                    part.retrying = True
            pending = later if complete else []
        if acks:
            yield from self._ack(batch[0].stream, acks, handled_ids, part)
        if part is not None and self.leases is not None:
            for entry in failed:  # counted where the partition's next owner finds it
                yield from self.leases.fenced(part, "fail", entry.id,
                                              self._errors.get(entry.id, ""), KEEP_MS)
        return complete

    def _over_budget(self, entry: Entry, part: Part | None) -> str:
        """Return why `entry` goes to the DLQ instead of the handler ('' when it does not)."""
        last = self._errors.get(entry.id, "")
        tail = f"; last error: {last}" if last else ""
        if part is None:
            if entry.deliveries <= self.max_deliveries:
                return ""
            return (f"delivered {entry.deliveries} times to group {self.group}, over the limit"
                    f" of {self.max_deliveries}{tail}")
        if entry.failures >= self.max_deliveries:
            return (f"the handler failed {entry.failures} times in group {self.group}, the"
                    f" limit is {self.max_deliveries}{tail}")
        if entry.deliveries > self.max_deliveries * HANDOVER_ALLOWANCE:
            return (f"delivered {entry.deliveries} times to group {self.group}, handovers"
                    f" included, over the limit of {self.max_deliveries * HANDOVER_ALLOWANCE}"
                    f"{tail}")
        return ""

    def _results(self, todo: list[Entry], errors: list[Exception | None], acks: list[str],
                 handled_ids: list[str], seen: set[str]) -> list[Entry]:
        """Count the handler's results; return the entries it failed on."""
        failed: list[Entry] = []
        for entry, error in zip(todo, errors, strict=False):
            if error is not None:
                failed.append(entry)
                self.stats.failed += 1
                self._errors[entry.id] = f"{type(error).__name__}: {error}"[:500]
                log.warning("handler failed on %s %s (delivery %d): %s",
                            entry.stream, entry.id, entry.deliveries, error)
                continue
            self.stats.handled += 1
            self._errors.pop(entry.id, None)
            acks.append(entry.id)
            if entry.event_id:
                seen.add(entry.event_id)
                handled_ids.append(entry.event_id)
        return failed

    def _ack(self, stream: str, ids: list[str], handled_ids: list[str],
             part: Part | None) -> Steps[None]:
        """XACK `ids` (fenced when ordered) and record the handled event ids (dedup)."""
        if part is None or self.leases is None:
            seen = self.dedup_set.record(stream, handled_ids)
            yield Multi((*([seen] if seen else []), Call("xack", (stream, self.group, *ids))))
        else:
            extra = [time.time(), *handled_ids] if self.dedup and handled_ids else []
            yield from self.leases.fenced(part, "ack", len(ids), *ids, *extra)
        self.stats.acked += len(ids)

    def _dead_letter(self, entry: Entry, part: Part | None, reason: str) -> Steps[None]:
        """Add `entry` to the DLQ (once, whatever the retries), then acknowledge it."""
        self._errors.pop(entry.id, None)
        body = {
            **entry.fields, "error": reason, "original_stream": entry.stream,
            "consumer_group": self.group, "entry_id": entry.id,
            "deliveries": str(entry.deliveries),
            **({"failures": str(entry.failures)} if part is not None else {}),
        }
        log.warning("entry %s of %s dead-lettered: %s", entry.id, entry.stream, reason)
        added = yield from script(
            "dlq_add", [keys.DLQ, keys.CONSUMER_DEAD],
            [f"{self.group} {entry.stream} {entry.id}", KEEP_MS,
             *[x for kv in body.items() for x in kv]])
        if not added:
            log.info("entry %s of %s was in the DLQ already (its ack had failed)",
                     entry.id, entry.stream)
        if part is None or self.leases is None:
            yield Call("xack", (entry.stream, self.group, entry.id))
        else:
            yield from self.leases.fenced(part, "ack", 1, entry.id)
