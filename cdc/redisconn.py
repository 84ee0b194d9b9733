"""Redis clients and the one translation of redis-py errors into SinkError/ConfigError."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio

from cdc.errors import ConfigError, SinkError

HINT = "check CDC_REDIS_URL and that Redis is up"


def redact_url(url: str) -> str:
    """Return a redis:// URL with any password replaced, safe to print."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or ''}:***@{host}{port}" if parts.password else f"{host}{port}"
    # the query string may carry password=...: keep none of it
    return urlunsplit(parts._replace(netloc=netloc, query=""))


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
        "CDC_REDIS_URL is not a valid Redis URL", hint="use redis://[:password@]host:port/db"
    )


def client(url: str, *, timeout: float, decode: bool = True) -> redis.Redis:
    """Return a client (not yet connected) with these socket timeouts, or raise ConfigError."""
    try:
        return redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0),
            decode_responses=decode,
        )
    except ValueError:
        raise bad_url() from None


def async_client(url: str, *, timeout: float, decode: bool = True) -> redis.asyncio.Redis:
    """Return a redis.asyncio client with these socket timeouts, or raise ConfigError."""
    try:
        return redis.asyncio.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=min(timeout, 5.0),
            decode_responses=decode,
        )
    except ValueError:
        raise bad_url() from None


def connect(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """Return a client (responses decoded) that answered PING, or raise SinkError."""
    r = client(url, timeout=timeout)
    try:
        r.ping()
    except (redis.RedisError, OSError) as e:
        r.close()
        raise SinkError(f"CDC_REDIS_URL: cannot reach {redact_url(url)}: {e}", hint=HINT) from None
    return r
