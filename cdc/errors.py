"""The one exception tree of axiom-cdc.

    CdcError                      -- everything we raise; carries an operator `hint`
    ├── ConfigError               -- a setting is wrong; stop and say which
    ├── MigrationError            -- a migration failed or an applied file changed
    ├── SourceError               -- PostgreSQL side (connection, replication protocol)
    │   └── SlotBusy              -- another consumer holds the slot; stand by
    ├── SinkError                 -- Redis unreachable or refusing writes; retry, never DLQ
    ├── EventError                -- one event cannot be published; retry then dead-letter
    │   └── EventTooLarge         -- its payload is over CDC_MAX_EVENT_BYTES
    └── StoreError                -- domain stores (Synapse, Weaver)
        └── DecryptError          -- wrong encryption key

Library errors are translated where we call the library (`raise X(...) from e`;
`db.translate` for psycopg, `redisconn.translate` for redis-py): a missing privilege or
table becomes ConfigError/MigrationError, an outage SourceError/SinkError.
`policy()` is the one place that decides what an error means for the relay loop.
"""

from __future__ import annotations

import enum


class CdcError(Exception):
    """Base of every error axiom-cdc raises."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        if hint:
            self.hint = hint

    def one_line(self) -> str:
        """Return the message and hint on a single line."""
        text = " ".join(str(self).split())
        return f"{text} (fix: {self.hint})" if self.hint else text


class ConfigError(CdcError):
    """A setting is missing or wrong."""


class MigrationError(CdcError):
    """A migration failed or an applied file was changed."""


class SourceError(CdcError):
    """PostgreSQL is unreachable or the replication stream broke."""


class SlotBusy(SourceError):
    """The replication slot is active in another session."""


class SinkError(CdcError):
    """Redis is unreachable or refused a write."""


class EventError(CdcError):
    """One event cannot be published (contract, size, route)."""


class EventTooLarge(EventError):
    """An event's payload is over the size limit; only a prefix of it is kept."""

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


class StoreError(CdcError):
    """A domain store refused an operation."""


class DecryptError(StoreError):
    """Ciphertext cannot be decrypted with the configured key."""


class Action(enum.Enum):
    """What the relay does about an error."""

    RETRY = "retry"  # transient: back off and try again, keep the slot position
    DEAD_LETTER = "dead_letter"  # this event only: count a failure, maybe dead-letter
    STOP = "stop"  # an operator must act: exit non-zero with the hint


def policy(exc: BaseException) -> Action:
    """Decide what the relay loop does about `exc`.

    Per-event problems go to the dead-letter path; PostgreSQL and Redis outages are
    retried with backoff; everything else (ConfigError: a setting or a privilege,
    MigrationError: a table, StoreError, anything unknown) stops with its hint.
    """
    if isinstance(exc, EventError):
        return Action.DEAD_LETTER
    if isinstance(exc, SinkError | SourceError):
        return Action.RETRY
    return Action.STOP
