"""Redis clients for operator commands, with library errors translated at the edge."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis

from cdc.errors import SinkError


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


@contextmanager
def redis_errors(what: str) -> Iterator[None]:
    """Translate redis-py errors raised inside the block into SinkError."""
    try:
        yield
    except (redis.RedisError, OSError) as e:
        raise SinkError(
            f"Redis {what} failed: {e}", hint="check CDC_REDIS_URL and that Redis is up"
        ) from None


def connect(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """Return a client (responses decoded) that answered PING, or raise SinkError."""
    client = redis.Redis.from_url(
        url, socket_timeout=timeout, socket_connect_timeout=timeout, decode_responses=True
    )
    try:
        client.ping()
    except (redis.RedisError, OSError) as e:
        client.close()
        raise SinkError(
            f"CDC_REDIS_URL: cannot reach {redact_url(url)}: {e}",
            hint="check CDC_REDIS_URL and that Redis is up",
        ) from None
    return client
