"""The relay loop: read → decode → batch → publish → ack → mark → confirm, over its stages.

Batches are sealed at CDC_BATCH_SIZE (or at a lull, after CDC_LINGER_MS), sent without
waiting, and acknowledged in order; at most CDC_MAX_IN_FLIGHT are unanswered. The slot is
confirmed only up to what Redis acknowledged and the Marker marked (`Marker.safe`); an
idle keepalive confirms the server's WAL end. Every stage is passed in (stages.py).
"""

from __future__ import annotations

import gc
import threading
import time
from dataclasses import dataclass, field

from cdc.observe.metrics import Metrics
from cdc.pipeline.checkpoint import Batch, Checkpoint
from cdc.pipeline.decode import Commit, Decoder, OutboxEvent
from cdc.pipeline.publisher import Publisher
from cdc.pipeline.source import Keepalive
from cdc.pipeline.stages import Clock, Marker, Source
from cdc.pipeline.writeback import LINGER_S

STATUS_MIN_INTERVAL = 0.01
WRITEBACK_RECHECK_S = 2 * LINGER_S  # a write-back lingers up to LINGER_S, then runs
REPLY_TIMEOUT = 5.0  # a batch unanswered this long is read with a blocking, timed-out read


@dataclass(frozen=True, slots=True)
class Knobs:
    """The loop's settings (CDC_BATCH_SIZE, ...), with their defaults."""

    batch_size: int = 500
    max_in_flight: int = 4
    linger_ms: float = 0.0
    status_interval_s: float = 1.0


@dataclass(slots=True)
class Stages:
    """What the loop runs over (stages.py): built by session.assemble, or fakes in tests."""

    source: Source
    publisher: Publisher
    marker: Marker
    checkpoint: Checkpoint
    decoder: Decoder = field(default_factory=Decoder)
    clock: Clock = time.monotonic


class RelayLoop:
    """Stream until stopped or, with a `target` LSN, until everything up to it is confirmed."""

    def __init__(
        self, stages: Stages, *, knobs: Knobs, metrics: Metrics, stop: threading.Event,
        target: int | None = None,
    ) -> None:
        self.st = stages
        self.k = knobs
        self.metrics = metrics
        self.stop = stop
        self.target = target
        self.batch: list[OutboxEvent] = []
        self.sent_lsn = -1
        self.sent_at = 0.0
        self.linger_until = 0.0

    def run(self) -> None:
        """Relay until stopped (in-flight batches drained) or drained to `target`."""
        batch_size, max_in_flight = self.k.batch_size, self.k.max_in_flight
        st, stop = self.st, self.stop
        decoder, read, feed, cp = st.decoder, st.source.read, st.decoder.feed, st.checkpoint
        batch = self.batch
        seen = 0
        # What exists now (modules, settings, connections) outlives the loop: frozen, it is
        # not re-scanned by every full collection the events' garbage triggers (about
        # 0.3 us an event). Collected first so no garbage is frozen; unfrozen on the way out.
        gc.collect()
        gc.freeze()
        try:
            while True:
                # Mid-transaction the rest is on its way and _idle would not seal: refill
                # from the socket at once, not after polling Redis and select() (syscalls
                # at every refill). Replies then wait for max_in_flight or a lull.
                msg = read(decoder.in_transaction)
                if msg is None:
                    if self._idle():
                        return
                    batch = self.batch
                    continue
                if type(msg) is Keepalive:
                    if not decoder.in_transaction and not batch:
                        cp.idle(msg.wal_end)
                    if msg.reply_requested:
                        self._status()
                    continue
                item = feed(msg)  # type: ignore[arg-type]
                if type(item) is OutboxEvent:
                    batch.append(item)
                    if len(batch) >= batch_size:
                        self._seal()
                        batch = self.batch
                        if len(cp.in_flight) >= max_in_flight:
                            self._ack_oldest()
                            if st.clock() - self.sent_at > STATUS_MIN_INTERVAL:
                                self._status()
                elif isinstance(item, Commit):
                    cp.committed(item.end_lsn)
                seen += 1
                if not seen & 1023 and stop.is_set():
                    self._drain()
                    return
        finally:
            gc.unfreeze()

    def _idle(self) -> bool:
        """Nothing buffered: flush, ack, confirm, then wait; return True when done.

        Inside a transaction the rest of it is on its way: keep filling the batch
        (it is sealed when full) instead of sending a small one.
        """
        st, cp = self.st, self.st.checkpoint
        if self.batch and (not st.decoder.in_transaction or self.stop.is_set()):
            if self._linger():
                return False
            self._seal()
        if cp.in_flight:
            oldest = cp.in_flight[0]
            reply = st.publisher.sink.wait(
                st.source.fileno, self.k.status_interval_s, oldest.replies
            )
            overdue = st.clock() - oldest.sent_at > REPLY_TIMEOUT
            if reply or overdue or self.stop.is_set():
                self._ack_oldest()  # blocks at most the socket timeout
            else:
                st.source.consume()
            return False
        if not st.decoder.in_transaction:
            cp.idle()
        safe = st.marker.safe(cp.confirmed)
        drained = self.target is not None and safe >= self.target
        if safe != self.sent_lsn or st.clock() - self.sent_at > self.k.status_interval_s:
            # In --once mode ask for a keepalive: it carries the server's WAL end.
            self._status(reply=self.target is not None and not drained)
            self.metrics.lag_seconds.set(0)
        if drained or self.stop.is_set():
            return True
        if safe < cp.confirmed:  # write-back still running: look again once it may be done
            st.source.wait(WRITEBACK_RECHECK_S)
        else:
            st.source.wait(self.k.status_interval_s if self.target is None else 0.05)
        return False

    def _linger(self) -> bool:
        """Hold a small batch up to CDC_LINGER_MS for more events; True while holding."""
        if not self.k.linger_ms or self.stop.is_set() or len(self.batch) >= self.k.batch_size:
            return False
        now = self.st.clock()
        if not self.linger_until:
            self.linger_until = now + self.k.linger_ms / 1000
        if now < self.linger_until:
            self.st.source.wait(self.linger_until - now)
            return True
        self.linger_until = 0.0
        return False

    def _status(self, *, reply: bool = False) -> None:
        safe = self.st.marker.safe(self.st.checkpoint.confirmed)
        self.st.source.send_status(safe, reply=reply)
        self.sent_lsn, self.sent_at = safe, self.st.clock()
        self.metrics.confirmed_lsn.set(safe)

    def _ack_oldest(self) -> None:
        """Read the oldest batch's replies; count it acknowledged only if none was an error.

        Then hand its rows to the Marker: the LSN is safe once both are done.
        """
        cp = self.st.checkpoint
        batch = cp.in_flight[0]
        self.st.publisher.ack(batch)
        self.st.marker.submit(batch.published_ids, batch.confirm_lsn)
        cp.acked()

    def _seal(self) -> None:
        batch = Batch(self.batch, 0, sent_at=self.st.clock())
        self.batch = []
        self.linger_until = 0.0
        self.st.publisher.send(batch)
        self.st.checkpoint.seal(batch)

    def _drain(self) -> None:
        cp = self.st.checkpoint
        if self.batch:
            self._seal()
        while cp.in_flight:
            self._ack_oldest()
        self.st.marker.flush(timeout=3.0)
        self._status()
