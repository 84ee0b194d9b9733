"""Redis clients for CDC_REDIS_URL, and the one translation of redis-py errors.

CDC_REDIS_URL is one of
    redis://[[user]:password@]host:port/db       a single Redis, or any node of a Redis Cluster
                                                 (told apart with INFO cluster)
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]
                                                 the primary Sentinel names, followed through
                                                 failovers (sentinel port default 26379)
The password is the data nodes'; `?sentinel_password=...` authenticates to the Sentinels.
redis-py has no URL form for Sentinel; this is the common `redis+sentinel` convention.
The functions that make connections take the URL as settings hold it (a SecretStr) and
unwrap it themselves (`reveal`): nothing else needs to see the password.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.sentinel
from pydantic import SecretStr
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import ConnectionPool, parse_url
from redis.sentinel import Sentinel

from cdc.errors import ConfigError, SinkError

HINT = "check CDC_REDIS_URL and that Redis is up"
SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
# What the operator tools get: a cluster client on a Redis Cluster, else a plain client.
Client: TypeAlias = redis.Redis | RedisCluster
Url: TypeAlias = str | SecretStr  # CDC_REDIS_URL as settings hold it, or a plain URL


def reveal(url: Url) -> str:
    """Return the URL itself: for the functions here that open connections, no one else."""
    return url.get_secret_value() if isinstance(url, SecretStr) else url


def redact_url(url: Url) -> str:
    """Return a redis:// or redis+sentinel:// URL with any password replaced, safe to print."""
    try:
        parts = urlsplit(reveal(url))
    except ValueError:
        return "<unparseable URL>"
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = userinfo.split(":", 1)[0] + ":***"
    netloc = f"{userinfo}@{hosts}" if at else hosts
    # the query string may carry password=...: keep none of it
    return urlunsplit(parts._replace(netloc=netloc, query=""))


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    """A parsed redis+sentinel:// URL."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None = field(repr=False)
    sentinel_password: str | None = field(repr=False)


def is_sentinel(url: Url) -> bool:
    """Tell whether `url` names a Sentinel-managed primary."""
    return reveal(url).split("://", 1)[0].lower() == SENTINEL_SCHEME


def parse_sentinel(url: Url) -> SentinelUrl:
    """Parse a redis+sentinel:// URL, or raise ConfigError (never echoing the URL)."""
    bad = ConfigError(
        "CDC_REDIS_URL is not a valid Sentinel URL",
        hint="use redis+sentinel://[:password@]host:port[,host:port]/service_name[/db]",
    )
    try:
        parts = urlsplit(reveal(url))
        userinfo, at, hosts = parts.netloc.rpartition("@")
        sentinels = []
        for item in hosts.split(","):
            host, _, port = item.rpartition(":") if ":" in item else (item, "", "")
            if not host:
                raise ValueError(item)
            sentinels.append((host, int(port) if port else SENTINEL_PORT))
        path = [p for p in parts.path.split("/") if p]
        if not 1 <= len(path) <= 2:
            raise ValueError(parts.path)
        user, _, password = userinfo.partition(":") if at else ("", "", "")
        query = parse_qs(parts.query)
        return SentinelUrl(
            sentinels, unquote(path[0]), int(path[1]) if len(path) == 2 else 0,
            unquote(user) or None, unquote(password) or None,
            query.get("sentinel_password", [None])[0],
        )
    except ValueError:
        raise bad from None


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


def bad_url() -> ConfigError:
    """Return the error for a URL redis-py cannot parse (its message would echo the URL)."""
    return ConfigError(
        "CDC_REDIS_URL is not a valid Redis URL",
        hint="use redis://[:password@]host:port/db or"
        " redis+sentinel://[:password@]host:port[,host:port]/service_name[/db]",
    )


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
