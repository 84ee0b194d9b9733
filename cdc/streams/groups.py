"""Consumer groups: create one (an existing group is fine) and read a stream's groups.

The one place that knows XGROUP CREATE's BUSYGROUP reply and XINFO GROUPS' fields, for the
relay's sink, the consumers and the operator tools (status, doctor, the metrics sampler).
Works on a plain client, a Sentinel's primary and a RedisCluster, decoded or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis
from redis.cluster import RedisCluster

Client = redis.Redis | RedisCluster


@dataclass(frozen=True, slots=True)
class GroupInfo:
    """One consumer group of a stream, as XINFO GROUPS reports it."""

    name: str
    consumers: int
    pending: int
    lag: int | None  # None when Redis cannot tell (entries deleted past the group; Redis < 7)
    last_delivered_id: str


def is_busygroup(e: BaseException) -> bool:
    """Tell whether `e` is XGROUP CREATE's reply for a group that exists already."""
    return isinstance(e, redis.ResponseError) and str(e).startswith("BUSYGROUP")


def ensure_group(
    client: Client, stream: str, group: str, id: str = "$", *, mkstream: bool = True
) -> bool:
    """Create `group` on `stream` from `id` (MKSTREAM); return False if it existed already.

    Any other Redis error propagates as redis-py raised it: the caller translates it.
    """
    try:
        client.xgroup_create(stream, group, id=id, mkstream=mkstream)
    except redis.ResponseError as e:
        if is_busygroup(e):
            return False
        raise
    return True


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def group_infos(client: Client, stream: str) -> list[GroupInfo]:
    """Return the consumer groups of `stream` (none when the stream does not exist)."""
    try:
        raw: Any = client.xinfo_groups(stream)
    except redis.ResponseError as e:
        if "no such key" in str(e).lower():
            return []
        raise
    out = []
    for g in raw:
        g = {_text(k): v for k, v in g.items()}
        lag = g.get("lag")
        out.append(GroupInfo(
            _text(g["name"]), int(g["consumers"]), int(g["pending"]),
            None if lag is None else int(lag), _text(g.get("last-delivered-id", "0-0")),
        ))
    return out
