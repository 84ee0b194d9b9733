"""Synapse's ontology cache, offline: digest, drop and rebuild a tenant's cache.

`rebuild` deletes a tenant's keys and applies the outbox rows again through the replay
path's reader (replay.pages); `digest` hashes what a cache holds, so a rebuilt copy can be
compared with the live one (`cdc ontology rebuild --check`, `cdc ontology digest`). On a
Redis Cluster a tenant's keys share one slot: `digest` and `drop` scan only its master.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.cluster import RedisCluster

from cdc.domain.ontology import EVENT_TYPES, Applied, OntologyCache
from cdc.ops import replay as replaylib
from cdc.pg import db
from cdc.settings import Settings
from cdc.streams import keys
from cdc.streams.redisconn import Client, redis_errors
from cdc.streams.republish import Row

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def tenant_keys(client: Client, ns_keys: keys.OntologyKeys, tenant: str) -> list[str]:
    """Return every key of one tenant's cache, sorted (on a cluster: its slot's master)."""
    prefix = ns_keys.tenant(tenant)
    pattern = _glob_escape(prefix) + "*"
    with redis_errors("SCAN"):
        if isinstance(client, RedisCluster):
            node = client.get_node_from_key(prefix)  # type: ignore[no-untyped-call]
            found = client.scan_iter(match=pattern, count=1000, target_nodes=node)
        else:
            found = client.scan_iter(match=pattern, count=1000)
        return sorted(str(k) for k in found)


def tenants(client: Client, ns_keys: keys.OntologyKeys) -> list[str]:
    """Return the tenants that have a cache, sorted."""
    with redis_errors("SMEMBERS"):
        members: Any = client.smembers(ns_keys.tenants)
        return sorted(str(t) for t in members)


@dataclass(frozen=True, slots=True)
class Digest:
    """A tenant's cache summarised: sha256 of its content (key names without the ns)."""

    tenant: str
    sha256: str
    cases: int
    roles: int
    edges: int


def digest(client: Client, tenant: str, *, ns: str = keys.ONTOLOGY_NS) -> Digest:
    """Hash one tenant's cache: every key (minus the ns prefix), type and content, sorted."""
    k = keys.OntologyKeys(ns)
    prefix = k.tenant(tenant)
    h = hashlib.sha256()
    counts = {"case": 0, "role": 0, "edge": 0}
    for key in tenant_keys(client, k, tenant):
        with redis_errors("TYPE"):
            kind = str(client.type(key))
            body: Any = (client.hgetall(key) if kind == "hash" else
                         sorted(client.smembers(key)) if kind == "set" else None)
        rel = key[len(prefix):]
        if kind == "hash":
            kind_of = rel.split(":", 1)[0]
            counts[kind_of] = counts.get(kind_of, 0) + 1
        h.update(orjson.dumps([rel, kind, body], option=orjson.OPT_SORT_KEYS) + b"\n")
    return Digest(tenant, h.hexdigest(), counts["case"], counts["role"], counts["edge"])


def drop(client: Client, tenant: str, *, ns: str = keys.ONTOLOGY_NS) -> int:
    """Delete one tenant's cache; return how many keys went."""
    k = keys.OntologyKeys(ns)
    found = tenant_keys(client, k, tenant)
    with redis_errors("UNLINK"):
        for i in range(0, len(found), 500):
            client.unlink(*found[i:i + 500])
        client.srem(k.tenants, tenant)
    return len(found)


def rows(conn: db.Conn, settings: Settings, tenant: str | None) -> Iterator[Row]:
    """Yield the outbox rows that build the cache, in (created_at, id) order.

    PENDING rows too (`mark_published=False`): the relay may not have marked an event that a
    live consumer already applied. FAILED and DEAD_LETTER rows were never delivered.
    """
    reader = settings.model_copy(update={"mark_published": False})
    rng = replaylib.Range(since=_EPOCH, tenant=tenant)
    for page in replaylib.pages(conn, reader, rng, settings.batch_size):
        yield from (r for r in page if r.event_type in EVENT_TYPES)


@dataclass(slots=True)
class Rebuilt:
    """What a rebuild did."""

    rows: int = 0
    dropped: int = 0
    applied: Applied = field(default_factory=Applied)
    digests: list[Digest] = field(default_factory=list)


def rebuild(
    conn: db.Conn, client: Client, settings: Settings, *, tenant: str | None = None,
    ns: str = keys.ONTOLOGY_NS,
) -> Rebuilt:
    """Drop the cache (one tenant or all) under `ns` and apply the outbox rows again.

    Safe beside a live consumer: keys are dropped before the rows are read, so an event
    the consumer applied meanwhile is also among the rows, and newer events win either way.
    Readers see a partial cache until it ends (`--check` builds a scratch copy instead).
    """
    cache = OntologyCache(client, ns=ns)
    out = Rebuilt()
    for t in [tenant] if tenant is not None else tenants(client, cache.keys):
        out.dropped += drop(client, t, ns=ns)
    for row in rows(conn, settings, tenant):
        out.rows += 1
        try:
            payload = orjson.loads(row.payload)
        except orjson.JSONDecodeError:
            continue  # the relay dead-letters such a row; it never reached a consumer
        cache.apply(row.tenant_id, row.event_type, payload, row.created_at)
    out.applied = cache.applied
    out.digests = [digest(client, t, ns=ns) for t in sorted(cache.applied.tenants)]
    return out


def compare(
    client: Client, names: Iterable[str], *, live: str = keys.ONTOLOGY_NS, other: str
) -> list[tuple[Digest, Digest]]:
    """Return the (live, other) digests of the tenants in `names` that differ."""
    pairs = [(digest(client, t, ns=live), digest(client, t, ns=other)) for t in sorted(names)]
    return [(a, b) for a, b in pairs if a != b]
