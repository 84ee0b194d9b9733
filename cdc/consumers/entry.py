"""What a consumer's handler gets (`Entry`), what it counts (`ConsumerStats`), and names."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry as a handler sees it."""

    stream: str
    id: str
    fields: dict[str, str]
    deliveries: int = 1
    fence: str = ""  # ordered: the partition lease's token ("<consumer> <epoch>") it came with
    failures: int = 0  # ordered: the handler failed on it this often (any owner)

    @property
    def event_id(self) -> str:
        """Return the outbox event id ('' when the entry has none)."""
        return self.fields.get("event_id", "")

    @property
    def event_type(self) -> str:
        """Return the event type ('' when the entry has none)."""
        return self.fields.get("event_type", "")

    def payload(self) -> Any:
        """Return the payload parsed from its JSON text (None when absent)."""
        text = self.fields.get("payload")
        return None if text is None else orjson.loads(text)


Handler = Callable[[Entry], None]
AsyncHandler = Callable[[Entry], Awaitable[None]]


@dataclass(slots=True)
class ConsumerStats:
    """Plain counters; `consumer_registry` exports them."""

    delivered: int = 0  # entries received (read or claimed)
    handled: int = 0  # handler returned
    acked: int = 0  # XACKed (handled, duplicates and dead letters)
    failed: int = 0  # handler raised
    claimed: int = 0  # taken over with XAUTOCLAIM
    dead_lettered: int = 0  # moved to the DLQ after too many deliveries
    duplicates: int = 0  # skipped: event_id already handled by the group
    redis_errors: int = 0  # Redis unreachable; retried with backoff
    leases_acquired: int = 0  # ordered: partitions taken (free, or after a lease lapsed)
    leases_lost: int = 0  # ordered: partitions lost (lease lapsed or taken over)
    fenced: int = 0  # ordered: a read, claim or ack refused because the lease was gone


def default_name() -> str:
    """Return a consumer name unique to this process: host-pid."""
    return f"{socket.gethostname()}-{os.getpid()}"


def pairs(flat: list[str] | None) -> dict[str, str]:
    """Return a script's flat [field, value, ...] list of an entry as a dict."""
    items = flat or []
    return dict(zip(items[::2], items[1::2], strict=True))
