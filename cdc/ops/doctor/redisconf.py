"""One Redis' settings: AOF persistence, and an eviction policy that cannot evict stream keys."""

from __future__ import annotations

import redis

from cdc.ops.doctor.findings import FAIL, OK, WARN, Finding


def check(client: redis.Redis) -> list[Finding]:
    """Check one Redis' persistence (AOF) and eviction policy."""
    try:
        conf: dict[str, str] = client.config_get("*")  # type: ignore[assignment]
    except redis.ResponseError as e:
        return [Finding(
            "redis_config", WARN, f"cannot read Redis settings (CONFIG GET refused: {e})",
            "check by hand that appendonly is yes and maxmemory-policy is noeviction",
        )]
    out = []
    if conf.get("appendonly") != "yes":
        out.append(Finding(
            "redis_aof", FAIL, "AOF is off: a Redis restart loses entries the slot already"
            " confirmed", "CONFIG SET appendonly yes; CONFIG REWRITE (or appendonly yes in"
            " redis.conf)",
        ))
    elif conf.get("appendfsync") != "always":
        out.append(Finding(
            "redis_aof", WARN, f"AOF is on with appendfsync {conf.get('appendfsync')}: a host"
            " crash can lose the last second of entries the slot already confirmed",
            "CONFIG SET appendfsync always; CONFIG REWRITE (costs write throughput)",
        ))
    else:
        out.append(Finding("redis_aof", OK, "AOF is on with appendfsync always"))
    policy = str(conf.get("maxmemory-policy", ""))
    if policy.startswith("allkeys"):
        out.append(Finding(
            "redis_eviction", FAIL, f"maxmemory-policy {policy} can evict stream keys",
            "CONFIG SET maxmemory-policy noeviction; CONFIG REWRITE",
        ))
    else:
        limit = conf.get("maxmemory", "0")
        out.append(Finding(
            "redis_eviction", OK,
            f"maxmemory-policy {policy} never evicts stream keys (maxmemory {limit})",
        ))
    return out
