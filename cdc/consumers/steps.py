"""What the consumer's generators yield to their driver, and the one way they run a script.

A generator of `Steps` yields a Redis command (`Call`), a MULTI (`Multi`), a pipeline
(`Pipe`), the handler (`Handle`), a wait (`Sleep`) or `Connect`, and is sent the reply;
`Consumer` (worker.py) and `AsyncConsumer` (aio.py) drive the same generators with a sync or
an asyncio client, a cluster client on a Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import redis

from cdc.streams import luascripts

if TYPE_CHECKING:
    from cdc.consumers.entry import Entry

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call:
    """A Redis command for the driver: `client.<method>(*args, **kwargs)`."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Multi:
    """Commands the driver sends as one MULTI/EXEC."""

    calls: tuple[Call, ...]


@dataclass(frozen=True, slots=True)
class Pipe:
    """Commands the driver pipelines without MULTI (on a cluster, one batch per node)."""

    calls: tuple[Call, ...]


@dataclass(frozen=True, slots=True)
class Connect:
    """Open the client unless open; the driver sends back True on a Redis Cluster."""


@dataclass(frozen=True, slots=True)
class Handle:
    """Run the handler on each entry in order, until stopped.

    The driver sends back, per entry it ran, None or the exception the handler raised. It
    runs no entry once the monotonic clock reaches `deadline` (a lease about to lapse), and
    none after a failure when `ordered`.
    """

    entries: list[Entry]
    deadline: float | None = None
    ordered: bool = False


@dataclass(frozen=True, slots=True)
class Sleep:
    """Wait `seconds` unless stopped; the driver sends back True when stopped."""

    seconds: float


Steps: TypeAlias = Generator[Call | Multi | Pipe | Handle | Sleep | Connect, Any, T]
# redis-py's cluster client raises RedisClusterException (no RedisError) when it cannot
# reach the cluster or its slots.
REDIS_ERRORS = (redis.RedisError, OSError, redis.exceptions.RedisClusterException)


def script(name: str, keys: Sequence[str], args: Sequence[Any]) -> Steps[Any]:
    """Run lua/`name`.lua by EVALSHA, loading it first when Redis does not have it."""
    lua = luascripts.script(name)
    call = Call("evalsha", (lua.sha, len(keys), *keys, *args))
    try:
        return (yield call)
    except redis.exceptions.NoScriptError:
        yield Call("script_load", (lua.text,))
        return (yield call)
