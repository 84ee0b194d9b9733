"""A Sentinel setup (CDC_REDIS_URL=redis+sentinel://...): can it name, and fail over, the primary?

Each Sentinel of the URL must answer; the Sentinels that answer must know the service and
agree on its master, at least `quorum` of them (the service's own quorum, SENTINEL MASTER);
SENTINEL CKQUORUM must say a failover could be authorized; the master must have the replicas
the relay's WAIT counts (CDC_REDIS_MIN_REPLICAS, and at least one for Sentinel to promote),
and refuse writes it cannot replicate (min-replicas-to-write), as on a cluster.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cdc.errors import ConfigError
from cdc.ops.doctor import replicas
from cdc.ops.doctor.findings import FAIL, OK, WARN, Finding
from cdc.settings import Settings
from cdc.streams import urls

TIMEOUT = 2.0


def _once() -> Retry:
    """One attempt per probe: a Sentinel that refuses is down, no need to back off and retry."""
    return Retry(NoBackoff(), 0)
Addr = tuple[str, int]


def check(settings: Settings) -> list[Finding]:
    """Run the Sentinel checks for the service CDC_REDIS_URL names."""
    try:
        url = urls.parse_sentinel(settings.redis_url)
    except ConfigError as e:
        return [Finding("sentinel", FAIL, str(e), e.hint)]
    out: list[Finding] = []
    named: dict[str, Addr | None] = {}
    quorum: int | None = None
    ckquorum: Finding | None = None
    for host, port in url.sentinels:
        where = f"{host}:{port}"
        try:
            addr, master, ck = _ask(host, port, url)
        except (redis.RedisError, OSError) as e:
            out.append(Finding(
                f"sentinel@{where}", FAIL, f"Sentinel {where} does not answer: {_line(e)}",
                "start it (redis-server <its sentinel.conf> --sentinel) or take it out of"
                " CDC_REDIS_URL; a failover needs a majority of the Sentinels up",
            ))
            continue
        out.append(Finding(f"sentinel@{where}", OK, f"Sentinel {where} answers"))
        named[where] = addr
        if master is not None and quorum is None:
            quorum = int(master.get("quorum", 0)) or None
            ckquorum = _quorum_finding(url.service, ck, master)
    if not named:
        return out  # nothing more to learn; the redis check says the primary is unreachable
    agreed, finding = _agreement(url.service, named, quorum)
    out.append(finding)
    if ckquorum is not None:
        out.append(ckquorum)
    if agreed is not None:
        out += _master(agreed, url, settings)
    return out


def _line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _pairs(raw: Any) -> dict[str, Any]:
    """Return a SENTINEL MASTER reply (flat list or dict) as a dict of text."""
    if isinstance(raw, dict):
        return {str(k): v for k, v in raw.items()}
    items = list(raw)
    return {str(items[i]): items[i + 1] for i in range(0, len(items) - 1, 2)}


def _ask(
    host: str, port: int, url: urls.SentinelUrl
) -> tuple[Addr | None, dict[str, Any] | None, str]:
    """Ask one Sentinel for the service's master address, its state and CKQUORUM."""
    kwargs: dict[str, Any] = {"socket_timeout": TIMEOUT, "socket_connect_timeout": TIMEOUT,
                              "retry": _once()}
    if url.sentinel_password:
        kwargs["password"] = url.sentinel_password
    with redis.Redis(host=host, port=port, decode_responses=True, **kwargs) as s:
        s.ping()
        raw: Any = s.execute_command("SENTINEL", "get-master-addr-by-name", url.service)
        if not raw:
            return None, None, ""
        addr = (str(raw[0]), int(raw[1]))
        master = _pairs(s.execute_command("SENTINEL", "MASTER", url.service))
        try:
            ck = str(s.execute_command("SENTINEL", "CKQUORUM", url.service))
        except redis.ResponseError as e:  # NOQUORUM: the reply is an error
            ck = f"ERR {e}"
    return addr, master, ck


def _quorum_finding(service: str, ck: str, master: dict[str, Any]) -> Finding:
    flags = str(master.get("flags", ""))
    if "o_down" in flags or "s_down" in flags:
        return Finding(
            "sentinel_quorum", FAIL, f"the Sentinels flag the master of {service} down ({flags})",
            "bring the master back, or let the failover finish (SENTINEL FAILOVER "
            f"{service} on a Sentinel forces one); then run cdc doctor again",
        )
    if ck.startswith("ERR"):
        return Finding(
            "sentinel_quorum", FAIL, f"SENTINEL CKQUORUM {service}: {ck[4:]}",
            "start the Sentinels that are down: a failover needs the quorum and a majority"
            " of every Sentinel that monitors the service",
        )
    return Finding("sentinel_quorum", OK, f"SENTINEL CKQUORUM {service}: {ck}")


def _agreement(
    service: str, named: dict[str, Addr | None], quorum: int | None
) -> tuple[Addr | None, Finding]:
    """Return the master most Sentinels name, and whether a quorum of them agree on it."""
    blind = sorted(w for w, a in named.items() if a is None)
    known = Counter(a for a in named.values() if a is not None)
    if not known:
        return None, Finding(
            "sentinel_master", FAIL, f"no Sentinel monitors a service named {service!r}",
            "check the service name at the end of CDC_REDIS_URL (on a Sentinel: redis-cli"
            " -p <port> SENTINEL MASTERS lists the monitored names)",
        )
    master, votes = known.most_common(1)[0]
    need = quorum or len(named) // 2 + 1
    msg = (f"{votes} of {len(named)} Sentinel(s) that answer name {master[0]}:{master[1]}"
           f" as master of {service} (quorum {need})")
    odd = [*(f"{w} does not monitor {service}" for w in blind),
           *(f"{w} names {a[0]}:{a[1]}" for w, a in sorted(named.items())
             if a is not None and a != master)]
    if votes >= need and not odd:
        return master, Finding("sentinel_master", OK, msg)
    return master if votes >= need else None, Finding(
        "sentinel_master", WARN if votes >= need else FAIL, f"{msg}; {'; '.join(odd)}",
        f"on each Sentinel that disagrees: SENTINEL RESET {service} (or give it `sentinel"
        f" monitor {service} {master[0]} {master[1]} {need}` in its sentinel.conf); start"
        " the Sentinels that are down",
    )


def _master(addr: Addr, url: urls.SentinelUrl, settings: Settings) -> list[Finding]:
    """Check the master's replicas and min-replicas-to-write."""
    host, port = addr
    where = f"{host}:{port}"
    try:
        with redis.Redis(
            host=host, port=port, db=url.db, username=url.username, password=url.password,
            socket_timeout=TIMEOUT, socket_connect_timeout=TIMEOUT, decode_responses=True,
            retry=_once(),
        ) as r:
            info: Any = r.info("replication")
            conf: Any = r.config_get("min-replicas-to-write")
    except (redis.RedisError, OSError) as e:
        return [Finding(
            "sentinel_replicas", FAIL, f"the master {where} does not answer: {_line(e)}",
            "start it again; the Sentinels promote a replica after down-after-milliseconds",
        )]
    connected = int(info.get("connected_slaves", 0))
    need = max(settings.redis_min_replicas, 1)
    if connected >= need:
        found = Finding("sentinel_replicas", OK, f"master {where} has {connected} replica(s)"
                        f" connected (CDC_REDIS_MIN_REPLICAS {settings.redis_min_replicas})")
    else:
        why = ("the relay's WAIT falls short on every batch and it confirms nothing"
               if settings.redis_min_replicas > connected else
               "Sentinel has no replica to promote: losing the master loses what it held")
        found = Finding(
            "sentinel_replicas", FAIL, f"master {where} has {connected} replica(s) connected,"
            f" needs {need}: {why}",
            f"start replicas of it (redis-server --replicaof {host} {port}, AOF on), or"
            " lower CDC_REDIS_MIN_REPLICAS to what you run",
        )
    guarded = int(conf.get("min-replicas-to-write", 0)) > 0
    return [found, *replicas.advice([] if guarded else [where], settings)]

