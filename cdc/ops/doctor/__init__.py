"""Preflight: every condition the relay needs, each finding with the exact fix.

One module per thing checked:
    postgres   wal_level, the output plugin (installed and allowed), free replication slots
               and WAL senders, WAL retention, the slot itself, a recorded Redis reset
    access     the role's REPLICATION attribute, its grants, the migrations
    redisnode  reachable, version, consumer groups
    redisconf  AOF persistence, an eviction policy that cannot evict stream keys
    cluster    on a Redis Cluster: cluster_state, replicas, min-replicas-to-write and AOF
               on every master
    sentinel   on redis+sentinel://: each Sentinel reachable, the service's master known and
               agreed by a quorum, its replicas, min-replicas-to-write
"""

from __future__ import annotations

from cdc.ops.doctor.findings import FAIL, OK, WARN, Finding, render
from cdc.ops.doctor.postgres import check_postgres
from cdc.ops.doctor.redisnode import check_redis
from cdc.settings import Settings

__all__ = ["FAIL", "OK", "WARN", "Finding", "check_postgres", "check_redis", "diagnose", "render"]


def diagnose(settings: Settings) -> list[Finding]:
    """Run every check against the configured PostgreSQL and Redis."""
    return [*check_postgres(settings), *check_redis(settings)]
