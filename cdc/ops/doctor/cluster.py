"""A Redis Cluster: cluster_state, and on every master its replicas, min-replicas-to-write, AOF."""

from __future__ import annotations

from typing import Any

import redis
from redis.cluster import RedisCluster

from cdc.ops.doctor import redisconf, replicas
from cdc.ops.doctor.findings import FAIL, OK, Finding
from cdc.settings import Settings


def check(rc: RedisCluster, settings: Settings) -> list[Finding]:
    """Check the cluster's state and, on every master, replicas, min-replicas-to-write, AOF."""
    out: list[Finding] = []
    state, lonely, unguarded = "", [], []
    for node in rc.get_primaries():  # type: ignore[no-untyped-call]
        r = node.redis_connection
        assert r is not None
        try:
            if not state:
                raw: Any = r.execute_command("CLUSTER", "INFO")
                lines = raw.items() if isinstance(raw, dict) else (
                    line.split(":", 1) for line in str(raw).splitlines() if ":" in line)
                state = next((str(v).strip() for k, v in lines if k == "cluster_state"), "?")
            n_replicas = int(r.info("replication").get("connected_slaves", 0))
            conf: Any = r.config_get("min-replicas-to-write")
            config = redisconf.check(r)
        except (redis.RedisError, OSError) as e:
            out.append(Finding(
                f"redis@{node.name}", FAIL, f"master {node.name} does not answer: {e}",
                "start it again, or promote its replica (CLUSTER FAILOVER FORCE on it)",
            ))
            continue
        if n_replicas == 0:
            lonely.append(node.name)
        if int(conf.get("min-replicas-to-write", 0)) == 0:
            unguarded.append(node.name)
        out += [Finding(f"{f.check}@{node.name}", f.level, f"{node.name}: {f.message}", f.fix)
                for f in config]
    out.insert(0, Finding(
        "cluster_state", OK if state == "ok" else FAIL, f"cluster_state is {state or '?'}",
        "redis-cli --cluster check <any node>; bring the failed nodes back or"
        " redis-cli --cluster fix <any node> (every slot needs a master)",
    ))
    out.append(Finding(
        "cluster_replicas", FAIL if lonely else OK,
        f"master(s) without a replica: {', '.join(lonely)}: when one fails its slots are"
        " down and what it held is gone" if lonely else "every master has a replica",
        "add a replica to each: redis-cli --cluster add-node <new host:port> <master"
        " host:port> --cluster-slave",
    ))
    out += replicas.advice(unguarded, settings)
    return out
