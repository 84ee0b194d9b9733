"""The one exception tree of axiom-cdc.

    CdcError                      -- everything we raise; carries an operator `hint`
    ├── ConfigError               -- a setting is wrong; stop and say which
    ├── MigrationError            -- a migration failed or an applied file changed
    ├── SourceError               -- PostgreSQL side (connection, replication protocol)
    │   └── SlotBusy              -- another consumer holds the slot; stand by
    ├── SinkError                 -- Redis unreachable or refusing writes; retry, never DLQ
    ├── EventError                -- one event cannot be published; retry then dead-letter
    └── StoreError                -- domain stores (Synapse, Weaver)
        └── DecryptError          -- wrong encryption key

Library errors are translated where we call the library (`raise X(...) from e`);
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
    """Decide what the relay loop does about `exc`."""
    if isinstance(exc, EventError):
        return Action.DEAD_LETTER
    if isinstance(exc, SinkError | SourceError):
        return Action.RETRY
    return Action.STOP
