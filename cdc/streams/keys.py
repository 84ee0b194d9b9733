"""Every Redis key name axiom-cdc uses, in one place."""

from __future__ import annotations

CORE_EVENTS = "axiom:core:events"
WATCHES = "axiom:watches"
WORKERS = "axiom:workers"
DLQ = "axiom:dlq:events"

# Per-stream high-water mark of what the relay published (a dedup key). Format 2 puts the
# stream's name in a hash tag, so the mark lives in the stream's Redis Cluster slot and
# one script can touch both; format 1 (before) was HWM_PREFIX + stream.
HWM_PREFIX = "axiom:cdc:hwm:"
# The Redis state format the relay wrote ("2"), set once format-1 marks are migrated.
FORMAT = "axiom:cdc:format"
FORMAT_VERSION = "2"
# Short-lived query jobs (Oracle/Weaver), with a TTL.
QUERY_JOB_PREFIX = "axiom:query:job:"
# Consumer-side dedup of event ids (cdc/consumers/dedup.py). Format 2: one ZSET per stream
# and group, the stream's name as hash tag (its cluster slot), so the XACK and the ZADD of a
# batch are one MULTI on a cluster too; format 1 (before): one ZSET per group, every stream.
CONSUMER_SEEN_PREFIX = "axiom:consumer:seen:"
CONSUMER_SEEN_FORMAT_PREFIX = "axiom:consumer:seen-format:"
CONSUMER_SEEN_FORMAT = "2"


def hash_tag(key: str) -> str | None:
    """Return the part of `key` Redis Cluster hashes, when it has a hash tag ({...})."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1 : end] if start >= 0 and end > start + 1 else None


def same_slot(key: str) -> str:
    """Return `key` in a form whose Redis Cluster slot is that of `key` itself, as a suffix.

    A name without a hash tag is wrapped in one ({name}); a name with one keeps it.
    """
    return key if hash_tag(key) is not None else "{" + key + "}"


def hwm(stream: str) -> str:
    """Return the key holding `stream`'s publish high-water mark (same slot as the stream)."""
    return HWM_PREFIX + same_slot(stream)


def hwm_v1(stream: str) -> str:
    """Return the format-1 key of `stream`'s mark (to migrate)."""
    return HWM_PREFIX + stream


def query_job(job_id: str) -> str:
    """Return the key of one query job."""
    return QUERY_JOB_PREFIX + job_id


def consumer_seen(stream: str, group: str) -> str:
    """Return the ZSET of the event ids `group` handled on `stream` (the stream's slot)."""
    return f"{CONSUMER_SEEN_PREFIX}{same_slot(stream)}:{group}"


def consumer_seen_v1(group: str) -> str:
    """Return the format-1 ZSET of every event id `group` handled (read once, to migrate)."""
    return CONSUMER_SEEN_PREFIX + group


def consumer_seen_format(stream: str, group: str) -> str:
    """Return the key saying `group`'s dedup set on `stream` is format 2 (migrated)."""
    return f"{CONSUMER_SEEN_FORMAT_PREFIX}{same_slot(stream)}:{group}"


# Event ids the DLQ replay has put back on a stream (SADD-guarded XADD, lua/replay.lua): one
# set per stream, in the stream's slot (DLQ_REPLAYED + same_slot(stream)). Before, one set
# DLQ_REPLAYED held them all; it is only read now (an id in it was replayed) and purged.
DLQ_REPLAYED = "axiom:cdc:dlq:replayed"
# Event ids one `cdc replay` run has republished, so a rerun with the same id resumes: one
# set per run and stream, in the stream's slot; before, one set per run (REPLAY_RUN_PREFIX +
# id), still read by a rerun.
REPLAY_RUN_PREFIX = "axiom:cdc:replay:"


def dlq_replayed(stream: str) -> str:
    """Return the set of event ids the DLQ replay put back on `stream` (its slot)."""
    return f"{DLQ_REPLAYED}:{same_slot(stream)}"


def replay_run(replay_id: str, stream: str) -> str:
    """Return the set of event ids replay run `replay_id` put back on `stream` (its slot)."""
    return f"{REPLAY_RUN_PREFIX}{replay_id}:{same_slot(stream)}"


def replay_run_v1(replay_id: str) -> str:
    """Return the one set of a replay run written before the sets were per stream."""
    return REPLAY_RUN_PREFIX + replay_id
# A token the relay writes once into each Redis it publishes to, and records in PostgreSQL
# (public.cdc_redis_state): a Redis without it, or with another one, lost what it held.
REDIS_INSTANCE = "axiom:cdc:instance"


# Synapse's ontology cache (cdc/domain/ontology.py). Every key of one tenant carries the tenant in a
# hash tag, {tenant}, so a tenant's keys share a cluster slot and one script may touch them.
ONTOLOGY_NS = "axiom:onto"


class OntologyKeys:
    """The ontology cache's keys under namespace `ns` (another ns makes a scratch copy).

        {ns}:tenants                         SET  tenants with a cache
        {ns}:{T}:cases                       SET  case ids of tenant T
        {ns}:{T}:case:<case_id>              HASH case_id, status, v
        {ns}:{T}:roles                       SET  role ids
        {ns}:{T}:role:<role_id>              HASH role_id, name, v
        {ns}:{T}:edge:<case_id>:<role_id>    HASH case_id, role_id, assignee_id, v (HAS_ROLE)
        {ns}:{T}:case_roles:<case_id>        SET  role ids of a case
        {ns}:{T}:role_cases:<role_id>        SET  case ids holding a role

    `v` is the order of the event that wrote the hash (lua/ontology_apply.lua).
    """

    def __init__(self, ns: str = ONTOLOGY_NS) -> None:
        self.ns = ns
        self.tenants = f"{ns}:tenants"

    def tenant(self, t: str) -> str:
        """Return the prefix of every key of tenant `t`."""
        return f"{self.ns}:{{{t}}}:"

    def cases(self, t: str) -> str:
        """Return the set of tenant `t`'s case ids."""
        return self.tenant(t) + "cases"

    def case(self, t: str, case_id: str) -> str:
        """Return one case node."""
        return f"{self.tenant(t)}case:{case_id}"

    def roles(self, t: str) -> str:
        """Return the set of tenant `t`'s role ids."""
        return self.tenant(t) + "roles"

    def role(self, t: str, role_id: str) -> str:
        """Return one role node."""
        return f"{self.tenant(t)}role:{role_id}"

    def edge(self, t: str, case_id: str, role_id: str) -> str:
        """Return the HAS_ROLE relationship of a case and a role."""
        return f"{self.tenant(t)}edge:{case_id}:{role_id}"

    def case_roles(self, t: str, case_id: str) -> str:
        """Return the set of role ids of one case."""
        return f"{self.tenant(t)}case_roles:{case_id}"

    def role_cases(self, t: str, role_id: str) -> str:
        """Return the set of case ids holding one role."""
        return f"{self.tenant(t)}role_cases:{role_id}"
# How many partitions a route's stream was published with (CDC_ROUTES "stream/N"): a relay
# refuses to start with another N until an operator drained the streams and deleted it.
PARTITIONS_PREFIX = "axiom:cdc:partitions:"


def partitions(stream: str) -> str:
    """Return the key recording how many partitions `stream` is published with."""
    return PARTITIONS_PREFIX + same_slot(stream)


# Ordered consumers (cdc/consumers/leases.py). A group's live members, and per partition stream and
# group a lease ("<consumer> <epoch>", PX) and its fence (the epoch counter, never expires);
# lease and fence take the stream's name as hash tag, so they share the stream's slot.
CONSUMER_MEMBERS_PREFIX = "axiom:consumer:members:"
LEASE_PREFIX = "axiom:consumer:lease:"
FENCE_PREFIX = "axiom:consumer:fence:"


def consumer_members(group: str) -> str:
    """Return the key of an ordered group's live members (ZSET consumer -> expiry ms)."""
    return CONSUMER_MEMBERS_PREFIX + group


def lease(stream: str, group: str) -> str:
    """Return the key of `group`'s lease on partition `stream` (same slot as the stream)."""
    return f"{LEASE_PREFIX}{same_slot(stream)}:{group}"


def fence(stream: str, group: str) -> str:
    """Return the key of the epoch counter behind `group`'s lease on `stream`."""
    return f"{FENCE_PREFIX}{same_slot(stream)}:{group}"


# Ordered consumers: per partition and group, the handler failures of pending entries
# (HASH entry id -> count, "<id>:e" -> last error), in the stream's slot, so lua/fenced.lua
# counts them with the lease checked and a new owner inherits them (a handover is no failure).
FAILURES_PREFIX = "axiom:consumer:failures:"
# Consumers' dead letters already added to the DLQ (ZSET "<group> <stream> <entry id>" ->
# Redis time ms), in the DLQ stream's slot: lua/dlq_add.lua adds an entry at most once, so a
# dead letter whose XACK failed (lease lost, Redis gone) is not added again by its retry.
CONSUMER_DEAD = "axiom:consumer:dead:" + same_slot(DLQ)


def failures(stream: str, group: str) -> str:
    """Return the key of `group`'s handler failures on partition `stream` (its slot)."""
    return f"{FAILURES_PREFIX}{same_slot(stream)}:{group}"
