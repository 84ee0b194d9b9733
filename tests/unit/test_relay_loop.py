"""The relay loop (`loop.RelayLoop`) in-process over fakes of its stages (stages.py: the
replication stream, the Redis sink, the write-back, the dead letters, the clock): batches
sealed at size, the in-flight limit, acks in order, the confirmed LSN never past an
unacknowledged or unwritten batch, an error reply ending the session, idle keepalives
confirmed, dead letters in the batch. The decoder is the real one, fed wal2json v2 JSON.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import orjson
import pytest

from cdc.errors import Action, EventError, SinkError
from cdc.observe.metrics import Metrics
from cdc.pg import lsn as lsnlib
from cdc.pipeline import publisher
from cdc.pipeline.checkpoint import Checkpoint
from cdc.pipeline.contracts import Registry
from cdc.pipeline.decode import OutboxEvent
from cdc.pipeline.loop import Knobs, RelayLoop, Stages
from cdc.pipeline.marks import Unmarked
from cdc.pipeline.publisher import Prepare, Publisher
from cdc.pipeline.source import Keepalive
from cdc.pipeline.stages import Failures, Marker, Replies, Sink, Source
from cdc.settings import Settings
from cdc.streams import keys
from cdc.streams.entries import DLQ_FIELDS


def tx(commit: int, n: int, payload: dict[str, Any] | None = None) -> list[bytes]:
    """Return one transaction of `n` CASE_CREATED inserts committed at LSN `commit`."""
    out = [orjson.dumps({"action": "B", "lsn": lsnlib.format(commit),
                         "timestamp": "2026-12-01 10:00:00+00"})]
    for i in range(n):
        cols = [
            {"name": "id", "value": str(uuid.uuid4())}, {"name": "tenant_id", "value": "t"},
            {"name": "aggregate_type", "value": "case"}, {"name": "aggregate_id", "value": "a"},
            {"name": "event_type", "value": "CASE_CREATED"},
            {"name": "payload", "value": orjson.dumps(
                payload or {"case_id": f"c{commit}-{i}", "status": "OPEN"}).decode()},
            {"name": "created_at", "value": "2026-12-01 10:00:00+00"},
        ]
        out.append(orjson.dumps({"action": "I", "schema": "public", "table": "event_outbox",
                                 "columns": cols}))
    out.append(orjson.dumps({"action": "C", "nextlsn": lsnlib.format(commit + 1)}))
    return out


LULL = None  # in a message list: the stream has nothing buffered for one read


class FakeStream:
    """Messages in order (LULL: one empty read), then nothing: sets `stop` at the end."""

    fileno = -1

    def __init__(self, messages: list[bytes | Keepalive | None], stop: threading.Event) -> None:
        self._messages = messages
        self._next = 0
        self._stop = stop
        self.statuses: list[int] = []

    def read(self, refill: bool = False) -> memoryview | Keepalive | None:
        if self._next >= len(self._messages):
            self._stop.set()
            return None
        msg = self._messages[self._next]
        self._next += 1
        if msg is None or isinstance(msg, Keepalive):
            return msg
        return memoryview(msg)

    def consume(self) -> None:
        pass

    def wait(self, timeout: float) -> None:
        pass

    def send_status(self, flushed: int, *, reply: bool = False) -> None:
        self.statuses.append(flushed)


class FakeSink:
    """Record what is sent; answer in order; refuse the batch numbered `fail_at`."""

    def __init__(self, fail_at: int = -1) -> None:
        self.sent: list[dict[str, list[list[str]]]] = []
        self.read: list[int] = []
        self.max_outstanding = 0
        self._fail_at = fail_at

    def send(self, by_stream: dict[str, list[list[str]]], names: Any) -> Replies:
        self.sent.append(by_stream)
        self.max_outstanding = max(self.max_outstanding, len(self.sent) - len(self.read))
        return ((len(self.sent) - 1, 1),)  # the batch's number stands in for a node

    def wait(self, other_fd: int, timeout: float, replies: Replies = ()) -> bool:
        return True

    def read_replies(self, replies: Replies) -> int:
        number = replies[0][0]
        if number == self._fail_at:
            raise SinkError("Redis refused XADD: OOM")
        self.read.append(number)
        return sum(len(v) for v in self.sent[number].values())


class FakeWriteBack:
    """Write back every submitted batch at once, except those numbered in `held`."""

    def __init__(self, held: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        self.submitted: list[tuple[list[str], int]] = []
        self._held = held
        self._done = 0
        self._stuck = False

    def submit(self, ids: list[str], confirm_lsn: int) -> None:
        if len(self.submitted) in self._held:
            self._stuck = True  # nothing after a held batch counts as written either
        elif not self._stuck:
            self._done = confirm_lsn
        self.submitted.append((list(ids), confirm_lsn))

    def safe(self, confirmed: int) -> int:
        return min(confirmed, self._done)

    def flush(self, timeout: float) -> None:
        pass

    def close(self) -> None:
        pass


def checks() -> Prepare:
    """Return the publisher's checks as a default relay has them."""
    s = Settings()
    return Prepare(s.router, Registry(unknown=s.unknown_events), max_bytes=s.max_event_bytes)


class FakeFailures:
    """Dead-letter every failed event at once (DeadLetters at CDC_MAX_RETRY=1)."""

    def __init__(self) -> None:
        self.last_error: EventError | None = None
        self.failed: list[str] = []

    def fail(self, event: OutboxEvent, error: EventError, check: Any) -> str | None:
        self.failed.append(event.event_id)
        self.last_error = error
        return None


class FakeClock:
    """Monotonic time that moves only when the test says so (or by `tick` a reading)."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 1000.0
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def run_loop(
    messages: list[bytes | Keepalive | None], *, sink: FakeSink, wb: FakeWriteBack | None = None,
    batch_size: int = 3, max_in_flight: int = 2, start: int = 0x100,
    raises: type[Exception] | None = None, failures: FakeFailures | None = None,
    clock: FakeClock | None = None,
) -> tuple[FakeStream, Checkpoint]:
    stop = threading.Event()
    stream = FakeStream(messages, stop)
    metrics = Metrics()
    prepare = checks()
    # The fakes stand in for the stages through their Protocols (stages.py).
    source: Source = stream
    to_redis: Sink = sink
    dead: Failures = failures or FakeFailures()
    marker: Marker = wb if wb is not None else Unmarked()
    cp = Checkpoint(start)
    stages = Stages(source, Publisher(prepare, to_redis, dead, metrics), marker, cp,
                    clock=clock or FakeClock())
    loop = RelayLoop(stages, knobs=Knobs(batch_size=batch_size, max_in_flight=max_in_flight),
                     metrics=metrics, stop=stop)
    if raises is None:
        loop.run()
    else:
        with pytest.raises(raises):
            loop.run()
    return stream, cp


def test_batches_are_sealed_at_size_and_small_ones_at_a_lull() -> None:
    sink = FakeSink()
    run_loop([*tx(0x200, 7), LULL, *tx(0x300, 1), *tx(0x400, 1)], sink=sink)
    # Sealed at 3, the rest at the lull; transactions arriving together share a batch.
    assert [len(b["axiom:core:events"]) for b in sink.sent] == [3, 3, 1, 2]
    assert sink.read == [0, 1, 2, 3]  # every batch acknowledged, in the order sent


def test_in_flight_batches_never_exceed_the_limit() -> None:
    sink = FakeSink()
    run_loop(tx(0x200, 30), sink=sink, batch_size=2, max_in_flight=3)
    assert len(sink.sent) == 15 and sink.max_outstanding == 3


def test_confirmed_only_after_the_ack_and_the_write_back() -> None:
    sink, wb = FakeSink(), FakeWriteBack(held={1})
    messages = [*tx(0x200, 2), LULL, *tx(0x300, 2), LULL, *tx(0x400, 2), LULL]
    stream, cp = run_loop(messages, sink=sink, wb=wb)
    assert cp.confirmed == 0x401  # Redis acknowledged all three batches...
    assert [lsn for _, lsn in wb.submitted] == [0x201, 0x301, 0x401]
    # ...but the second was never written back: nothing past the first is confirmed.
    assert stream.statuses and max(stream.statuses) == 0x201, stream.statuses


def test_an_error_reply_ends_the_session_before_anything_after_it_counts() -> None:
    sink, wb = FakeSink(fail_at=1), FakeWriteBack()
    messages = [*tx(0x200, 2), *tx(0x300, 2), *tx(0x400, 2), LULL]
    stream, cp = run_loop(messages, sink=sink, wb=wb, batch_size=2, max_in_flight=3,
                          raises=SinkError)
    assert len(sink.sent) == 3 and sink.read == [0]  # 2 and 3 were sent, never acknowledged
    assert [lsn for _, lsn in wb.submitted] == [0x100]  # nor written back
    assert cp.confirmed == 0x100 and all(x <= 0x100 for x in stream.statuses)


def test_an_idle_keepalive_confirms_its_wal_end() -> None:
    sink = FakeSink()
    stream, cp = run_loop([*tx(0x200, 1), LULL, LULL, Keepalive(0x900, True)], sink=sink)
    assert cp.confirmed == 0x900 and 0x900 in stream.statuses


def test_a_failed_event_is_dead_lettered_in_its_batch_and_never_marked() -> None:
    sink, wb, failures = FakeSink(), FakeWriteBack(), FakeFailures()
    broken = tx(0x300, 1, payload={"case_id": "c"})  # CASE_CREATED without its status
    run_loop([*tx(0x200, 1), *broken, *tx(0x400, 1), LULL], sink=sink, wb=wb,
             failures=failures)
    assert len(sink.sent) == 1 and len(failures.failed) == 1
    sent = sink.sent[0]
    assert len(sent["axiom:core:events"]) == 2
    (dead,) = sent[keys.DLQ]
    fields = dict(zip(DLQ_FIELDS, dead[1:], strict=True))
    assert fields["event_id"] == failures.failed[0]
    assert "status" in fields["error"] and fields["original_stream"] == "axiom:core:events"
    marked = wb.submitted[0][0]
    assert len(marked) == 2 and failures.failed[0] not in marked  # only what was published


def test_the_publisher_dead_letters_only_what_errors_policy_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """errors.policy() is the one place that decides: told to stop, the publisher raises."""
    monkeypatch.setattr(publisher, "policy", lambda e: Action.STOP)
    sink, failures = FakeSink(), FakeFailures()
    broken = tx(0x300, 1, payload={"case_id": "c"})
    with pytest.raises(EventError, match="status"):
        run_loop([*tx(0x200, 1), *broken, LULL], sink=sink, failures=failures)
    assert sink.sent == [] and failures.failed == []


def test_an_unanswered_batch_is_read_once_overdue() -> None:
    stop = threading.Event()
    messages: list[bytes | Keepalive | None] = [*tx(0x200, 1), *[LULL] * 8]
    stream = FakeStream(messages, stop)

    class SlowSink(FakeSink):
        waits = 0
        read_at = -1

        def wait(self, other_fd: int, timeout: float, replies: Replies = ()) -> bool:
            self.waits += 1
            return False  # never says a reply is ready

        def read_replies(self, replies: Replies) -> int:
            self.read_at = stream._next
            return super().read_replies(replies)

    sink = SlowSink()
    prepare = checks()
    stages = Stages(stream, Publisher(prepare, sink, FakeFailures(), Metrics()), Unmarked(),
                    Checkpoint(0x100), clock=FakeClock(tick=2.0))
    RelayLoop(stages, knobs=Knobs(), metrics=Metrics(), stop=stop).run()
    # Each look at the clock is 2 s later: past REPLY_TIMEOUT (5 s) the batch is read anyway,
    # while the stream still has lulls to give (not because it ran out and stopped the loop).
    assert sink.read == [0] and sink.waits >= 2 and sink.read_at < len(messages)


def test_once_returns_when_the_target_is_confirmed_and_reads_no_further() -> None:
    stop = threading.Event()
    messages: list[bytes | Keepalive | None] = [*tx(0x200, 2), LULL, LULL, *tx(0x300, 1)]
    stream, sink = FakeStream(messages, stop), FakeSink()
    prepare = checks()
    cp = Checkpoint(0x100)
    stages = Stages(stream, Publisher(prepare, sink, FakeFailures(), Metrics()), Unmarked(), cp,
                    clock=FakeClock())
    RelayLoop(stages, knobs=Knobs(), metrics=Metrics(), stop=stop, target=0x201).run()
    assert not stop.is_set() and cp.confirmed == 0x201 and stream.statuses[-1] == 0x201
    assert len(sink.sent) == 1 and stream._next < len(messages)  # the last tx was left
