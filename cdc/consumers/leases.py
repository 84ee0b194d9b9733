"""Which partitions an ordered consumer owns: leases in Redis, fenced, shared out fairly.

    keys.consumer_members(group)  ZSET consumer -> expiry   lua/members.lua (heartbeat)
    keys.lease(stream, group)     "<consumer> <epoch>" PX   lua/lease.lua (SET NX PX, renew)
    keys.fence(stream, group)     the epoch counter         INCRed by each new owner
    keys.failures(stream, group)  handler failures per entry lua/fenced.lua (fail, ack)

Each key but the member set takes the partition's name as hash tag: on a Redis Cluster it
lives in the partition's slot, so one script touches it with the stream.

Every `lease_ms / 3` a consumer beats in the member set, renews each lease it holds (a
lease it lost is dropped at once), releases those above its fair share and takes free
ones up to it: with M members and N partitions, the first N mod M members (by name) own
N // M + 1, the others N // M. Reads, claims, acks and failure counts of a partition go
through lua/fenced.lua, which refuses them unless the lease still holds this owner's token;
the handler runs only before `Part.valid_until` (0.8 of the lease after the renewal was
sent, by the local monotonic clock, which keeps running while a process is stopped).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from cdc.consumers.steps import Steps, script
from cdc.streams import keys

log = logging.getLogger(__name__)
SAFETY = 0.8  # share of the lease the owner trusts, counted from before the renewal


@dataclass(slots=True)
class Part:
    """One partition this consumer owns: its token and where it is in the partition."""

    stream: str
    token: str
    valid_until: float  # time.monotonic(): run no handler on this partition after it
    drained: bool = False  # the pending entries (earlier owners' included) are finished
    cursor: str = "0-0"  # XAUTOCLAIM cursor while draining
    idle: bool = False  # the last read found nothing new
    last_id: str = "0-0"  # newest entry seen, for the blocking wait
    not_before: float = 0.0  # after a handler failure: retry from here
    retrying: bool = False  # claim only the failed entry until it is handled or dead


def fair_share(members: list[str], me: str, streams: list[str]) -> tuple[int, list[str]]:
    """Return how many of `streams` `me` should own, and all of them, its preferred first."""
    ordered = sorted(set(members) | {me})
    m, i = len(ordered), ordered.index(me)
    want = len(streams) // m + (1 if i < len(streams) % m else 0)
    mine = [s for k, s in enumerate(streams) if k % m == i]
    return want, mine + [s for s in streams if s not in mine]


class Leases:
    """The partitions of `streams` that consumer `me` of `group` holds, kept as Steps."""

    def __init__(self, *, group: str, me: str, lease_ms: int) -> None:
        self.group = group
        self.me = me
        self.lease_ms = lease_ms
        self.streams: list[str] = []
        self.owned: dict[str, Part] = {}
        self.members: list[str] = []
        self.next_beat = 0.0
        self.acquired = 0
        self.lost = 0

    def due(self) -> bool:
        """Return True when the next heartbeat and renewal are due."""
        return time.monotonic() >= self.next_beat

    def seconds_to_beat(self) -> float:
        """Return how long until the next heartbeat (0 when due)."""
        return max(0.0, self.next_beat - time.monotonic())

    def rebalance(self) -> Steps[list[Part]]:
        """Beat, renew, release above the fair share, acquire up to it; return new parts."""
        t0 = time.monotonic()
        self.next_beat = t0 + self.lease_ms / 3000
        members: Any = yield from script(
            "members", [keys.consumer_members(self.group)], ["join", self.me, self.lease_ms])
        self.members = [str(m) for m in members]
        for part in list(self.owned.values()):
            ok = yield from self._lease("renew", part.stream, part.token)
            if ok:
                part.valid_until = t0 + self.lease_ms / 1000 * SAFETY
            else:
                self.drop(part, "its lease expired")
        want, order = fair_share(self.members, self.me, self.streams)
        for stream in sorted(self.owned, key=order.index, reverse=True):
            if len(self.owned) <= want:
                break
            part = self.owned.pop(stream)
            yield from self._lease("release", stream, part.token)
            log.info("%s released %s (fair share %d)", self.me, stream, want)
        new: list[Part] = []
        for stream in order:
            if len(self.owned) >= want:
                break
            if stream in self.owned:
                continue
            token = yield from self._lease("acquire", stream, self.me)
            if token is not None:
                part = self.owned[stream] = Part(stream, str(token),
                                                 t0 + self.lease_ms / 1000 * SAFETY)
                new.append(part)
                self.acquired += 1
                log.info("%s owns %s (%s)", self.me, stream, part.token)
        return new

    def drop(self, part: Part, why: str) -> None:
        """Forget a partition this consumer lost (nothing of it is read, handled or acked)."""
        if self.owned.pop(part.stream, None) is not None:
            self.lost += 1
            log.warning("%s lost %s: %s", self.me, part.stream, why)

    def fenced(self, part: Part, op: str, *args: Any) -> Steps[Any]:
        """Run `op` (read, claim, ack, fail) on the partition through lua/fenced.lua."""
        s, g = part.stream, self.group
        return (yield from script(
            "fenced", [keys.lease(s, g), s, keys.failures(s, g), keys.consumer_seen(s, g)],
            [part.token, op, g, self.me, *args]))

    def leave(self) -> Steps[None]:
        """Release every lease and leave the member set, so the others take over now."""
        for part in list(self.owned.values()):
            yield from self._lease("release", part.stream, part.token)
        self.owned.clear()
        self.members = []
        yield from script(
            "members", [keys.consumer_members(self.group)], ["leave", self.me, self.lease_ms])

    def _lease(self, op: str, stream: str, who: str) -> Steps[Any]:
        return (yield from script(
            "lease", [keys.lease(stream, self.group), keys.fence(stream, self.group)],
            [op, who, self.lease_ms]))
