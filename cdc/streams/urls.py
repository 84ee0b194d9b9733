"""CDC_REDIS_URL: its forms, parsed and redacted here (no connection is made here).

CDC_REDIS_URL is one of
    redis://[[user]:password@]host:port/db       a single Redis, or any node of a Redis Cluster
                                                 (told apart with INFO cluster)
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service_name[/db]
                                                 the primary Sentinel names, followed through
                                                 failovers (sentinel port default 26379)
The password is the data nodes'; `?sentinel_password=...` authenticates to the Sentinels.
redis-py has no URL form for Sentinel; this is the common `redis+sentinel` convention.
`reveal` unwraps the SecretStr for the connection makers of `cdc.streams.redisconn` (and
for the parsing here): nothing else needs to see the password.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from pydantic import SecretStr

from cdc.errors import ConfigError

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
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


def bad_url() -> ConfigError:
    """Return the error for a URL redis-py cannot parse (its message would echo the URL)."""
    return ConfigError(
        "CDC_REDIS_URL is not a valid Redis URL",
        hint="use redis://[:password@]host:port/db or"
        " redis+sentinel://[:password@]host:port[,host:port]/service_name[/db]",
    )
