"""What the relay loop needs from each stage: small Protocols, so it runs over fakes too.

    Source   the replication stream (source.ReplicationStream)
    Sink     the Redis side (sink.RedisSink)
    Marker   marks acknowledged rows PUBLISHED (writeback.WriteBack; marks.MarkNow, Unmarked)
    Failures per-event failures: retries and dead letters (deadletter.DeadLetters)
    Clock    monotonic seconds (time.monotonic)

session.assemble builds the real ones; tests/unit pass in-memory fakes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from cdc.errors import EventError
from cdc.pipeline.decode import OutboxEvent
from cdc.pipeline.source import Keepalive

Replies = tuple[tuple[int, int], ...]  # what a batch's commands await: (node, replies) each
Clock = Callable[[], float]


class Source(Protocol):
    """A started replication stream: messages in, standby status out."""

    fileno: int  # readable when more messages arrived

    def read(self, refill: bool = False) -> memoryview | Keepalive | None:
        """Return the next buffered message, or None (never blocks)."""

    def consume(self) -> None:
        """Take what the socket holds into the buffer (never blocks)."""

    def wait(self, timeout: float) -> None:
        """Block until more arrived or `timeout` passed."""

    def send_status(self, flushed: int, *, reply: bool = False) -> None:
        """Confirm `flushed`; with `reply`, ask the server for a keepalive."""


class Sink(Protocol):
    """Where batches go: sent without waiting, answered in order."""

    def send(
        self, by_stream: dict[str, list[list[str]]], names: dict[str, tuple[str, ...]]
    ) -> Replies:
        """Write each stream's entries; return the replies to read."""

    def wait(self, other_fd: int, timeout: float, replies: Replies = ((0, 1),)) -> bool:
        """Wait for a reply of `replies` or for `other_fd`; True when a reply is ready."""

    def read_replies(self, replies: Replies) -> int:
        """Read a batch's replies (raise on an error reply); return the entries added."""


class Marker(Protocol):
    """Marks acknowledged batches' rows PUBLISHED, in order, and says how far it got."""

    def submit(self, ids: list[str], confirm_lsn: int) -> None:
        """Queue a batch's ids; its LSN becomes safe once they are marked."""

    def safe(self, confirmed: int) -> int:
        """Return the highest LSN both acknowledged (`confirmed`) and marked."""

    def flush(self, timeout: float) -> None:
        """Wait until everything submitted is marked (or `timeout` passed)."""


class Failures(Protocol):
    """Per-event failures: count attempts, retry the check, dead-letter at the limit."""

    last_error: EventError | None  # what the last dead-lettered event failed with

    def fail(
        self, event: OutboxEvent, error: EventError, check: Callable[[OutboxEvent], str]
    ) -> str | None:
        """Return the stream after a retry passed; None: dead-lettered; SKIP: published."""

