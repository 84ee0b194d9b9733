"""Redis clients for CDC_REDIS_URL (single, Cluster, Sentinel, asyncio), and the one
translation of redis-py errors.

The URL forms and their parsing are in `cdc.streams.urls`. The functions here take the URL
as settings hold it (a SecretStr) and unwrap it themselves: nothing else sees the password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

import redis
import redis.asyncio
import redis.asyncio.sentinel
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import ConnectionPool, parse_url
from redis.sentinel import Sentinel

from cdc.errors import ConfigError, SinkError
from cdc.streams.urls import (
    SentinelUrl,
    Url,
    bad_url,
    is_sentinel,
    parse_sentinel,
    redact_url,
    reveal,
)

HINT = "check CDC_REDIS_URL and that Redis is up"
# What the operator tools get: a cluster client on a Redis Cluster, else a plain client.
Client: TypeAlias = redis.Redis | RedisCluster


class _SentinelPrimary(redis.Redis):
    """The Sentinel's primary; closing it closes the connections to the Sentinels too."""

    watchers: Sentinel | None = None

    def close(self) -> None:
        """Close the primary's pool, then each Sentinel client."""
        super().close()
        for c in self.watchers.sentinels if self.watchers else ():
            c.close()


class _AsyncSentinelPrimary(redis.asyncio.Redis):
    """The asyncio Sentinel's primary; closing it closes the Sentinel clients too."""

    watchers: redis.asyncio.sentinel.Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        """Close the primary, then each Sentinel client."""
        await super().aclose(close_connection_pool)
        for c in self.watchers.sentinels if self.watchers else ():
            await c.aclose()


def _sentinel_kwargs(s: SentinelUrl, timeout: float) -> dict[str, Any]:
    """Return the options of the connections to the Sentinels themselves."""
    kwargs: dict[str, Any] = {"socket_timeout": timeout,
                              "socket_connect_timeout": min(timeout, 5.0)}
    if s.sentinel_password:
        kwargs["password"] = s.sentinel_password
    return kwargs


def _primary_kwargs(s: SentinelUrl, timeout: float) -> dict[str, Any]:
    """Return the options of the connections to the primary a Sentinel names."""
    return {"socket_timeout": timeout, "socket_connect_timeout": min(timeout, 5.0),
            "db": s.db, "username": s.username, "password": s.password}


def _sentinel(url: str, timeout: float) -> tuple[Sentinel, SentinelUrl]:
    s = parse_sentinel(url)
    sentinel = Sentinel(s.sentinels, sentinel_kwargs=_sentinel_kwargs(s, timeout))  # type: ignore[no-untyped-call]
    return sentinel, s


def pool(url: Url, *, timeout: float) -> ConnectionPool:
    """Return a connection pool for `url`: the Sentinel's primary, or the one Redis named."""
    url = reveal(url)
    if is_sentinel(url):
        sentinel, s = _sentinel(url, timeout)
        master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            s.service, **_primary_kwargs(s, timeout)
        )
        return master.connection_pool
    try:
        return ConnectionPool.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
    except ValueError:  # the message would echo the URL, password included
        raise bad_url() from None


def translate(e: Exception, what: str) -> SinkError:
    """Return the SinkError for a redis-py (or socket) error `e` raised by `what`."""
    # redis-py 8 raises OutOfMemoryError for an OOM reply, without the "OOM" in its text.
    if isinstance(e, redis.exceptions.OutOfMemoryError) or (
        isinstance(e, redis.ResponseError) and str(e).startswith("OOM")
    ):
        return SinkError(
            f"Redis refused {what}: OOM, used memory is over maxmemory ({e})",
            hint="Redis is full: raise maxmemory, trim streams (`cdc trim`), or add memory",
        )
    if isinstance(e, redis.ResponseError) and str(e).startswith("CDCGAP"):
        return SinkError(
            f"Redis refused {what}: an earlier batch did not land ({e})",
            hint="the relay resumes from its confirmed position; see the error before this one",
        )
    return SinkError(f"Redis {what} failed: {e}", hint=HINT)


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py errors raised inside the block into SinkError."""
    try:
        yield
    except (redis.RedisError, OSError) as e:
        raise translate(e, what) from None


def client(url: Url, *, timeout: float, decode: bool = True) -> redis.Redis:
    """Return a client (not yet connected) of one Redis or the Sentinel's primary."""
    url = reveal(url)
    if is_sentinel(url):
        sentinel, s = _sentinel(url, timeout)
        primary: _SentinelPrimary = sentinel.master_for(  # type: ignore[no-untyped-call]
            s.service, redis_class=_SentinelPrimary, decode_responses=decode,
            **_primary_kwargs(s, timeout),
        )
        primary.watchers = sentinel
        return primary
    try:
        return redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0),
            decode_responses=decode,
        )
    except ValueError:
        raise bad_url() from None


def async_client(url: Url, *, timeout: float, decode: bool = True) -> redis.asyncio.Redis:
    """Return a redis.asyncio client of one Redis or the Sentinel's primary."""
    url = reveal(url)
    if is_sentinel(url):
        s = parse_sentinel(url)
        sentinel = redis.asyncio.sentinel.Sentinel(  # type: ignore[no-untyped-call]
            s.sentinels, sentinel_kwargs=_sentinel_kwargs(s, timeout)
        )
        aprimary: _AsyncSentinelPrimary = sentinel.master_for(
            s.service, redis_class=_AsyncSentinelPrimary, decode_responses=decode,
            **_primary_kwargs(s, timeout),
        )
        aprimary.watchers = sentinel
        return aprimary
    try:
        return redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0),
            decode_responses=decode,
        )
    except ValueError:
        raise bad_url() from None


def is_cluster(url: Url, *, timeout: float = 5.0) -> bool:
    """Tell whether `url` points at a node of a Redis Cluster (INFO cluster)."""
    url = reveal(url)
    if is_sentinel(url):  # Sentinel watches primaries of non-cluster Redis only
        return False
    c = client(url, timeout=timeout)
    try:
        return bool(c.info("cluster").get("cluster_enabled"))
    except (redis.RedisError, OSError) as e:
        raise translate(e, "INFO cluster") from None
    finally:
        c.close()


def open_client(
    url: Url, *, timeout: float = 5.0, decode: bool = True, cluster: bool | None = None
) -> Client:
    """Return the client `url` needs: a RedisCluster on a cluster, else a Redis.

    `cluster` says which when the caller knows already (else INFO cluster is asked).
    """
    url = reveal(url)
    if cluster is None:
        cluster = is_cluster(url, timeout=timeout)
    if not cluster:
        return client(url, timeout=timeout, decode=decode)
    try:
        return RedisCluster.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0),
            decode_responses=decode,
        )
    except ValueError:
        raise bad_url() from None
    except (redis.RedisError, OSError) as e:
        raise translate(e, "CLUSTER SLOTS") from None


def connect(url: Url, *, timeout: float = 5.0) -> Client:
    """Return a client (responses decoded) that answered PING, or raise SinkError."""
    url = reveal(url)
    try:
        r = open_client(url, timeout=timeout)
    except SinkError as e:
        raise SinkError(f"CDC_REDIS_URL: cannot reach {redact_url(url)}: {e}", hint=HINT) from None
    try:
        r.ping()
    except (redis.RedisError, OSError) as e:
        r.close()
        raise SinkError(f"CDC_REDIS_URL: cannot reach {redact_url(url)}: {e}", hint=HINT) from None
    return r


def cluster_client(url: Url, *, timeout: float, nodes: list[tuple[str, int]]) -> RedisCluster:
    """Return a cluster client from `url`, or from `nodes` (seen before) with its credentials."""
    url = reveal(url)
    opts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if not nodes:
        return RedisCluster.from_url(url, **opts)
    creds = {k: v for k, v in parse_url(url).items()  # type: ignore[no-untyped-call]
             if k in ("username", "password", "ssl")}
    startup = [ClusterNode(host, port) for host, port in nodes]  # type: ignore[no-untyped-call]
    return RedisCluster(startup_nodes=startup, **creds, **opts)


def connect_single(url: Url, *, timeout: float = 5.0) -> redis.Redis:
    """Return a client of one Redis (or the Sentinel's primary); refuse a Redis Cluster."""
    r = connect(url, timeout=timeout)
    if isinstance(r, RedisCluster):
        r.close()
        raise ConfigError(
            "this command needs one Redis (or Sentinel), not a Redis Cluster",
            hint="point CDC_REDIS_URL at a single Redis for it",
        )
    return r


async def open_async_client(
    url: Url, *, timeout: float
) -> redis.asyncio.Redis | AsyncRedisCluster:
    """Return the asyncio client `url` needs: a cluster client on a Redis Cluster."""
    plain = async_client(url, timeout=timeout)
    if is_sentinel(url):
        return plain
    try:
        info: Any = await plain.info("cluster")
    except BaseException:
        await plain.aclose()
        raise
    if not info.get("cluster_enabled"):
        return plain
    await plain.aclose()
    try:
        return AsyncRedisCluster.from_url(
            reveal(url), socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0),
            decode_responses=True)
    except ValueError:
        raise bad_url() from None
