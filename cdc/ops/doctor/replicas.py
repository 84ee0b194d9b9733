"""Advice shared by a Redis Cluster and a Sentinel setup: acknowledged writes need replicas."""

from __future__ import annotations

from cdc.ops.doctor.findings import OK, WARN, Finding
from cdc.settings import Settings

GUARD_FIX = (
    "on each master: CONFIG SET min-replicas-to-write 1; CONFIG SET min-replicas-max-lag 10;"
    " CONFIG REWRITE"
)


def advice(unguarded: list[str], settings: Settings) -> list[Finding]:
    """Warn about masters with min-replicas-to-write 0, and a relay that does not WAIT."""
    out = [Finding(
        "min_replicas_to_write", WARN if unguarded else OK,
        f"min-replicas-to-write is 0 on {', '.join(unguarded)}: a master cut off from its"
        " replicas keeps taking writes that a failover then discards" if unguarded
        else "every master refuses writes without a replica (min-replicas-to-write)",
        GUARD_FIX,
    )]
    if settings.redis_min_replicas == 0:
        out.append(Finding(
            "redis_min_replicas", WARN, "CDC_REDIS_MIN_REPLICAS is 0: the relay confirms a"
            " batch a master holds alone; a failover can lose it",
            "set CDC_REDIS_MIN_REPLICAS=1 (docs/architecture.md, Past one Redis)",
        ))
    return out
