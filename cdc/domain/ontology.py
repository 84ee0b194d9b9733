"""Synapse's ontology cache in Redis: case nodes, role nodes and HAS_ROLE relationships.

Built from three core events (contracts in cdc/contracts.py):

    CASE_CREATED          {case_id, status, at}   case node
    CASE_STATUS_CHANGED   {case_id, to_status, at} the case node's status
    CASE_ROLE_ASSIGNED    {case_id, role_id, role_name, assignee_id?, at?}
                          role node + case -[HAS_ROLE {assignee_id}]-> role

Every node and edge keeps the order `v` of the event that last wrote it (payload `at`,
else the outbox row's created_at in microseconds) and lua/ontology_apply.lua writes only a
newer one: redelivered, reclaimed or replayed events change nothing, in any order. The key
schema is keys.OntologyKeys; digest, drop and rebuild are in `cdc.domain.ontology_rebuild`.

On a Redis Cluster every key of one tenant hashes to one slot (keys.OntologyKeys puts the
tenant in a hash tag; the schema is unchanged, so caches written before stay readable):
the script's keys share a slot and the set of tenants is one key of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis

from cdc.consumers.entry import Entry
from cdc.errors import EventError
from cdc.streams import keys, luascripts
from cdc.streams.redisconn import Client, redis_errors

EVENT_TYPES = ("CASE_CREATED", "CASE_STATUS_CHANGED", "CASE_ROLE_ASSIGNED")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


def order_of(event_type: str, payload: dict[str, Any], created_at: str) -> int:
    """Return an event's order: payload `at` (µs) or, failing that, created_at in µs.

    Rows written before sql/008 have no `at`; their status change counts 1 µs after a
    creation in the same transaction (same created_at).
    """
    at = payload.get("at")
    if isinstance(at, int) and not isinstance(at, bool):
        return at
    try:
        ts = datetime.fromisoformat(created_at)
    except ValueError:
        raise EventError(f"event has neither `at` nor a readable created_at ({created_at!r})"
                         ) from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return (ts - _EPOCH) // _US + (event_type == "CASE_STATUS_CHANGED")


@dataclass(slots=True)
class Applied:
    """What applying events did."""

    written: int = 0  # node or edge hashes written
    stale: int = 0  # hashes left alone: they already held a newer event
    ignored: int = 0  # events of other types
    tenants: set[str] = field(default_factory=set)


class OntologyCache:
    """Apply core events to the cache under `ns`; a Consumer handler as `handle`."""

    def __init__(self, client: Client, *, ns: str = keys.ONTOLOGY_NS) -> None:
        self._r = client
        self.keys = keys.OntologyKeys(ns)
        self._apply = luascripts.script("ontology_apply")
        self.applied = Applied()

    def handle(self, entry: Entry) -> None:
        """Apply one stream entry (a Consumer handler); other event types are ignored."""
        if entry.event_type not in EVENT_TYPES:
            self.applied.ignored += 1
            return
        try:
            payload = entry.payload()
        except orjson.JSONDecodeError as e:
            raise EventError(f"{entry.event_type} {entry.event_id}: payload is not JSON: {e}"
                             ) from None
        self.apply(entry.fields.get("tenant_id", ""), entry.event_type, payload,
                   entry.fields.get("created_at", ""))

    def apply(self, tenant: str, event_type: str, payload: Any, created_at: str) -> None:
        """Apply one event; raise EventError when it cannot be (retried, then dead-lettered)."""
        if event_type not in EVENT_TYPES:
            self.applied.ignored += 1
            return
        if not tenant or not isinstance(payload, dict) or not payload.get("case_id"):
            raise EventError(f"{event_type}: needs a tenant_id and a payload with case_id")
        v, k = order_of(event_type, payload, created_at), self.keys
        case_id = str(payload["case_id"])
        if event_type == "CASE_ROLE_ASSIGNED":
            role_id = str(payload.get("role_id") or "")
            if not role_id:
                raise EventError("CASE_ROLE_ASSIGNED: needs role_id")
            writes = [
                ([k.role(tenant, role_id), k.roles(tenant)],
                 {"role_id": role_id, "name": str(payload.get("role_name") or "")}, [role_id]),
                ([k.edge(tenant, case_id, role_id), k.case_roles(tenant, case_id),
                  k.role_cases(tenant, role_id)],
                 {"case_id": case_id, "role_id": role_id,
                  "assignee_id": str(payload.get("assignee_id") or "")}, [role_id, case_id]),
            ]
        else:
            status = payload.get("status" if event_type == "CASE_CREATED" else "to_status")
            if not isinstance(status, str):
                raise EventError(f"{event_type}: needs a status")
            writes = [([k.case(tenant, case_id), k.cases(tenant)],
                       {"case_id": case_id, "status": status}, [case_id])]
        calls = [self._apply.command(hash_keys, [v, len(fields),
                                                 *[x for kv in fields.items() for x in kv],
                                                 *members])
                 for hash_keys, fields, members in writes]
        with redis_errors("EVALSHA ontology_apply"):
            pipe = self._r.pipeline(transaction=False)
            pipe.sadd(k.tenants, tenant)
            for call in calls:
                pipe.execute_command(*call)
            added, *done = pipe.execute(raise_on_error=False)
            if isinstance(added, Exception):
                raise added
            done = self._rerun_unloaded(calls, done)
        self.applied.written += sum(1 for d in done if d == 1)
        self.applied.stale += sum(1 for d in done if d == 0)
        self.applied.tenants.add(tenant)

    def _rerun_unloaded(self, calls: list[tuple[Any, ...]], done: list[Any]) -> list[Any]:
        """Load the script where Redis answered NOSCRIPT and run those calls again.

        Safe: the script writes a hash only for a newer event, and adds set members.
        """
        again = [i for i, d in enumerate(done) if isinstance(d, redis.exceptions.NoScriptError)]
        if again:
            self._apply.load(self._r)  # every master of a cluster
            pipe = self._r.pipeline(transaction=False)
            for i in again:
                pipe.execute_command(*calls[i])
            for i, d in zip(again, pipe.execute(raise_on_error=False), strict=True):
                done[i] = d
        for d in done:
            if isinstance(d, Exception):
                raise d
        return done

    def case(self, tenant: str, case_id: str) -> dict[str, str]:
        """Return one case node ({} when absent)."""
        with redis_errors("HGETALL"):
            return self._r.hgetall(self.keys.case(tenant, case_id))  # type: ignore[return-value]

    def roles_of(self, tenant: str, case_id: str) -> dict[str, dict[str, str]]:
        """Return a case's roles: role id -> the edge (assignee_id) merged with the role node."""
        with redis_errors("SMEMBERS"):
            members: Any = self._r.smembers(self.keys.case_roles(tenant, case_id))
            role_ids = sorted(str(m) for m in members)
            pipe = self._r.pipeline(transaction=False)
            for rid in role_ids:
                pipe.hgetall(self.keys.role(tenant, rid))
                pipe.hgetall(self.keys.edge(tenant, case_id, rid))
            got = pipe.execute()
        return {rid: {"name": got[2 * i].get("name", ""),
                      "assignee_id": got[2 * i + 1].get("assignee_id", "")}
                for i, rid in enumerate(role_ids)}

    def cases_with_role(self, tenant: str, role_id: str) -> list[str]:
        """Return the ids of the cases holding a role, sorted."""
        with redis_errors("SMEMBERS"):
            members: Any = self._r.smembers(self.keys.role_cases(tenant, role_id))
            return sorted(str(m) for m in members)
