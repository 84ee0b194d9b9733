"""Every Redis key name axiom-cdc uses, in one place."""

from __future__ import annotations

CORE_EVENTS = "axiom:core:events"
WATCHES = "axiom:watches"
WORKERS = "axiom:workers"
DLQ = "axiom:dlq:events"

# Per-stream high-water mark of what the relay published: "commit_lsn:position".
HWM_PREFIX = "axiom:cdc:hwm:"
# Short-lived query jobs (Oracle/Weaver), with a TTL.
QUERY_JOB_PREFIX = "axiom:query:job:"
# Consumer-side dedup of event ids.
CONSUMER_SEEN_PREFIX = "axiom:consumer:seen:"


def hwm(stream: str) -> str:
    """Return the key holding `stream`'s publish high-water mark."""
    return HWM_PREFIX + stream


def query_job(job_id: str) -> str:
    """Return the key of one query job."""
    return QUERY_JOB_PREFIX + job_id


def consumer_seen(group: str) -> str:
    """Return the key of the event ids a consumer group has handled."""
    return CONSUMER_SEEN_PREFIX + group

# Event ids the DLQ replay has put back on their streams (SADD-guarded XADD, lua/replay.lua).
DLQ_REPLAYED = "axiom:cdc:dlq:replayed"
# Event ids one `cdc replay` run has republished, so a rerun with the same id resumes.
REPLAY_RUN_PREFIX = "axiom:cdc:replay:"


def replay_run(replay_id: str) -> str:
    """Return the key of the event ids one replay run has republished."""
    return REPLAY_RUN_PREFIX + replay_id
# A token the relay writes once into each Redis it publishes to, and records in PostgreSQL
# (public.cdc_redis_state): a Redis without it, or with another one, lost what it held.
REDIS_INSTANCE = "axiom:cdc:instance"
