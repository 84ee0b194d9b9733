"""The Redis checks: reachable, version, persistence, eviction, consumer groups.

A Redis Cluster's masters are checked in cluster.py, a Sentinel setup in sentinel.py, one
Redis' persistence and eviction in redisconf.py.
"""

from __future__ import annotations

import redis
from redis.cluster import RedisCluster

from cdc.errors import CdcError
from cdc.ops.doctor import cluster, redisconf, sentinel
from cdc.ops.doctor.findings import FAIL, OK, WARN, Finding
from cdc.settings import Settings
from cdc.streams import groups, redisconn, urls


def check_redis(settings: Settings) -> list[Finding]:
    """Run the Redis checks."""
    url = settings.redis_url
    # Sentinel's own checks first: they still say what is wrong when no primary answers.
    out: list[Finding] = sentinel.check(settings) if urls.is_sentinel(url) else []
    try:
        client = redisconn.connect(url)
    except CdcError as e:
        return [*out, Finding("redis", FAIL, str(e), e.hint)]
    with client:
        try:
            version = str(client.info("server").get("redis_version", "?"))
            where = urls.redact_url(url)
            out.append(Finding("redis", OK, f"connected to {where} ({version})"))
            if int(version.split(".")[0]) < 7:
                out.append(Finding(
                    "redis_version", WARN, f"Redis {version}: consumer-group lag needs 7.0",
                    "upgrade Redis to 7 or later",
                ))
            if isinstance(client, RedisCluster):
                out += cluster.check(client, settings)
            else:
                out += redisconf.check(client)
            out.append(_groups(client, settings))
        except redis.RedisError as e:
            out.append(Finding("redis", FAIL, f"Redis check failed: {e}", "check CDC_REDIS_URL"))
    return out


def _groups(client: redisconn.Client, settings: Settings) -> Finding:
    want = set(settings.groups)
    missing = []
    for stream in settings.router.streams():
        have = {g.name for g in groups.group_infos(client, stream)}
        missing += [f"{stream}/{g}" for g in sorted(want - have)]
    if missing:
        return Finding(
            "consumer_groups", WARN, f"consumer groups missing: {', '.join(missing)}",
            "cdc run creates them at start (XGROUP CREATE ... MKSTREAM)",
        )
    return Finding("consumer_groups", OK, "every routed stream has its consumer groups")
