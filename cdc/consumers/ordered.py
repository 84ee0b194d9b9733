"""The ordered consumer's steps: one owner per partition, each aggregate in commit order.

Each partition stream of the group has at most one owner at a time, by a fenced lease
(leases.py); a new owner first finishes the pending entries the previous one left
(XAUTOCLAIM from 0-0, oldest first), then reads on, and a failed entry holds its partition
back, so each aggregate's events are handled in commit order. Reads, claims and acks are
refused once the lease is lost; the handler gets the lease's token as `Entry.fence` for
writes that must be fenced too.

While every owned partition is idle the consumer blocks in one XREAD over them; on a Redis
Cluster with owned partitions in several slots it waits CLUSTER_POLL_MS and reads again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from cdc.consumers.entry import Entry, pairs
from cdc.consumers.handling import Handling
from cdc.consumers.leases import Leases, Part
from cdc.consumers.plain import CLUSTER_POLL_MS, by_slot
from cdc.consumers.steps import REDIS_ERRORS, Call, Sleep, Steps

log = logging.getLogger(__name__)


class OrderedSteps(Handling):
    """Owning, draining and reading partitions through leases, as Steps."""

    def _ordered_step(self, leases: Leases, block_ms: int) -> Steps[int]:
        """Rebalance when due; per owned partition finish what is pending, else read on."""
        n = 0
        for part in [None, *leases.owned.values()]:
            if leases.due():
                yield from self._rebalance(leases)
            if part is None or leases.owned.get(part.stream) is not part:
                continue  # lost (and maybe taken again, a new tenure) since the list was made
            if time.monotonic() < part.not_before:
                continue
            try:
                n += yield from (self._read_part(part) if part.drained else self._drain(part))
            except REDIS_ERRORS as e:
                if "FENCED" not in str(e):
                    part.drained, part.cursor = False, "0-0"  # an ack may not have landed
                    raise
                self.stats.fenced += 1
                leases.drop(part, "a fenced call was refused")
        self.stats.leases_lost = leases.lost
        if n == 0 and not self._stopped():
            yield from self._wait(leases, block_ms)
        return n

    def _rebalance(self, leases: Leases) -> Steps[None]:
        yield from leases.rebalance()
        self.stats.leases_acquired, self.stats.leases_lost = leases.acquired, leases.lost
        if time.monotonic() >= self._next_claim:
            self._next_claim = time.monotonic() + max(self.claim_idle_ms / 2000, 0.05)
            yield from self.dedup_set.prune(list(leases.owned))

    def _drain(self, part: Part) -> Steps[int]:
        """Claim and handle the partition's pending entries (earlier owners'), oldest first."""
        assert self.leases is not None
        # Retrying a failed entry claims it alone: the entries behind it, not handled yet,
        # are not delivered again (their delivery counts stay for their own failures).
        count = 1 if part.retrying else self.count
        reply: Any = yield from self.leases.fenced(part, "claim", part.cursor, count)
        nxt, raw, counts, deleted, failed = reply
        if deleted:
            log.info("%d pending entries of %s were trimmed away", deleted, part.stream)
        times = dict(zip(counts[::2], counts[1::2], strict=True))
        failures: dict[str, int] = {}
        for eid, n, error in zip(failed[::3], failed[1::3], failed[2::3], strict=True):
            failures[eid] = int(n)
            if error:
                self._errors.setdefault(eid, error)  # an earlier owner's, for the DLQ reason
        batch = [Entry(part.stream, eid, pairs(f), int(times.get(eid, 2)), part.token,
                       failures.get(eid, 0)) for eid, f in raw]
        self.stats.claimed += len(batch)
        if batch and not (yield from self._handle(batch, part)):
            part.cursor = "0-0"  # cut short: start again at the oldest pending entry
            return len(batch)
        part.cursor, part.retrying = str(nxt), False
        part.drained = part.cursor == "0-0"
        return len(batch)

    def _read_part(self, part: Part) -> Steps[int]:
        assert self.leases is not None
        reply: Any = yield from self.leases.fenced(part, "read", self.count)
        raw, newest = reply
        batch = [Entry(part.stream, eid, pairs(f), 1, part.token) for eid, f in raw]
        part.idle = not batch
        part.last_id = batch[-1].id if batch else str(newest or part.last_id)
        if batch and not (yield from self._handle(batch, part)):
            part.drained = False  # what was not handled is pending: finish it first
        return len(batch)

    def _wait(self, leases: Leases, block_ms: int) -> Steps[None]:
        """Block until an owned partition has new entries, the next heartbeat, or block_ms."""
        now = time.monotonic()
        parts = list(leases.owned.values())
        ready = [p for p in parts if p.not_before <= now]
        if not all(p.idle and p.drained for p in ready):
            return  # more to do at once
        ms = min(block_ms, leases.seconds_to_beat() * 1000,
                 *[(p.not_before - now) * 1000 for p in parts if p.not_before > now])
        if ready and (not self.cluster or len(by_slot([p.stream for p in ready])) == 1):
            yield Call("xread", ({p.stream: p.last_id for p in ready},),
                       {"count": 1, "block": max(1, int(ms))})
        elif ready:  # one XREAD cannot span slots: poll
            yield Sleep(max(min(ms, CLUSTER_POLL_MS), 1) / 1000)
        else:
            yield Sleep(max(ms, 1) / 1000)
