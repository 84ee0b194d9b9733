"""What LSN is safe to confirm: only positions whose every event Redis acknowledged.

A batch is sealed with the end LSN of the last transaction whose commit was decoded
before the seal; all of that transaction's events are in this batch or earlier ones.
Batches are acknowledged in order, so confirming a batch's LSN never skips an event.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from cdc.pipeline.decode import OutboxEvent


@dataclass(slots=True)
class Batch:
    """Events sent together, and the LSN their acknowledgement makes safe."""

    events: list[OutboxEvent]
    confirm_lsn: int
    replies: tuple[tuple[int, int], ...] = ()  # (node, replies to read): RedisSink.send
    sent_at: float = 0.0
    published_ids: list[str] = field(default_factory=list)


class Checkpoint:
    """Track in-flight batches and the confirmable LSN."""

    def __init__(self, start_lsn: int) -> None:
        self.confirmed = start_lsn
        self.last_commit_end = start_lsn
        self.in_flight: deque[Batch] = deque()

    def committed(self, end_lsn: int) -> None:
        """Record that a transaction ending at `end_lsn` was fully decoded."""
        self.last_commit_end = max(self.last_commit_end, end_lsn)

    def seal(self, batch: Batch) -> None:
        """Queue a sent batch; its ack will make the last decoded commit safe."""
        batch.confirm_lsn = self.last_commit_end
        self.in_flight.append(batch)

    def acked(self) -> Batch:
        """Mark the oldest batch acknowledged and advance the confirmable LSN.

        Call it after the batch's replies were read without an error, never before.
        """
        batch = self.in_flight.popleft()
        self.confirmed = max(self.confirmed, batch.confirm_lsn)
        return batch

    def idle(self, wal_end: int = 0) -> None:
        """Nothing in flight and no open transaction: confirm up to what was decoded."""
        if not self.in_flight:
            self.confirmed = max(self.confirmed, self.last_commit_end, wal_end)
            self.last_commit_end = self.confirmed
