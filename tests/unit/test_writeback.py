"""WriteBack.safe over a fake connection: the LSN it lets the relay confirm never passes a
batch whose rows are not marked yet — queued, running, or not yet visible — and an error
on its thread reaches the relay. MarkNow and Unmarked, the other Markers, too.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from cdc.errors import CdcError
from cdc.pipeline.marks import FENCE_PASSED_SQL, MarkNow, Unmarked
from cdc.pipeline.stages import Marker
from cdc.pipeline.writeback import WriteBack

TABLE = "public.event_outbox"


class Result:
    def __init__(self, rows: list[tuple[Any, ...]], rowcount: int = 0) -> None:
        self._rows, self.rowcount = rows, rowcount

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._rows[0] if self._rows else None

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self._rows)


class FakeConn:
    """The outbox as a set of visible ids; the mark UPDATEs told apart by their parameters."""

    def __init__(self) -> None:
        self.visible: set[str] = set()
        self.marked: list[str] = []
        self.fence_passed = False
        self.gate = threading.Event()  # the UPDATE waits for it (a statement running)
        self.gate.set()
        self.fail: Exception | None = None
        self.closed = False

    def execute(self, query: Any, params: tuple[Any, ...] = ()) -> Result:
        if isinstance(query, sql.Composed):  # mark_published (1 param), missing_after_mark (2)
            assert self.gate.wait(10)
            if self.fail is not None:
                raise self.fail
            ids = params[0].split(",")
            seen = [i for i in ids if i in self.visible and i not in self.marked]
            self.marked += seen
            unseen = [(i,) for i in ids if i not in self.visible]
            return Result(unseen if len(params) == 2 else [], rowcount=len(seen))
        if query == FENCE_PASSED_SQL:
            return Result([(self.fence_passed,)])
        if "pg_current_xact_id" in query:
            return Result([("1000",)])
        return Result([])  # SET ...

    def transaction(self) -> contextlib.nullcontext[None]:
        return contextlib.nullcontext()

    def cancel_safe(self, timeout: float) -> None:
        self.gate.set()

    def close(self) -> None:
        self.closed = True


def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


@contextlib.contextmanager
def writeback(conn: FakeConn, start: int = 0x100) -> Iterator[WriteBack]:
    wb = WriteBack(conn, table=TABLE, start_lsn=start)  # type: ignore[arg-type]
    try:
        yield wb
    finally:
        conn.gate.set()
        wb.close(timeout=5)


def test_safe_waits_for_every_submitted_batch_to_be_marked() -> None:
    conn = FakeConn()
    conn.visible = {"a", "b", "c"}
    with writeback(conn) as wb:
        assert wb.safe(0x300) == 0x300  # nothing submitted: whatever Redis acknowledged
        conn.gate.clear()  # the first UPDATE hangs
        wb.submit(["a"], 0x200)
        wb.submit(["b", "c"], 0x300)
        assert wb.safe(0x300) == 0x100  # neither is marked: the start position, no further
        conn.gate.set()
        wb.flush(timeout=5)
        assert sorted(conn.marked) == ["a", "b", "c"]
        assert wb.safe(0x300) == 0x300
        assert wb.safe(0x250) == 0x250  # never past what Redis acknowledged


def test_rows_not_yet_visible_hold_the_lsn_until_they_are_marked() -> None:
    conn = FakeConn()
    conn.visible = {"a"}
    with writeback(conn) as wb:
        wb.submit(["x"], 0x150)
        wb.flush(timeout=5)  # "x" is not visible either: owed from the start position on
        wb.submit(["a", "b"], 0x200)
        wb.flush(timeout=5)
        assert wb.owed == 2 and wb.safe(0x300) == 0x100
        conn.visible |= {"b", "x"}  # their commits became visible
        eventually(lambda: wb.owed == 0)
        assert wb.safe(0x300) == 0x300 and sorted(conn.marked) == ["a", "b", "x"]
        assert wb.dropped == 0


def test_a_row_deleted_before_its_mark_is_dropped_once_older_transactions_ended() -> None:
    conn = FakeConn()
    with writeback(conn) as wb:
        wb.submit(["gone"], 0x200)
        wb.flush(timeout=5)
        assert wb.safe(0x300) == 0x100 and wb.owed == 1
        conn.fence_passed = True  # every transaction older than the miss ended: deleted
        eventually(lambda: wb.owed == 0)
        assert wb.dropped == 1 and wb.safe(0x300) == 0x300


def test_an_error_on_the_write_back_thread_reaches_the_relay() -> None:
    conn = FakeConn()
    conn.visible = {"a"}
    conn.fail = psycopg.OperationalError("server closed the connection unexpectedly")
    with writeback(conn) as wb:
        wb.submit(["a"], 0x200)
        with pytest.raises(CdcError, match="write-back"):
            wb.flush(timeout=5)
        with pytest.raises(CdcError, match="write-back"):
            wb.safe(0x200)
        with pytest.raises(CdcError):
            wb.submit(["b"], 0x300)
    assert conn.closed


def test_mark_now_marks_in_the_callers_transaction_and_unmarked_marks_nothing() -> None:
    conn = FakeConn()
    conn.visible = {"a", "b"}
    now: Marker = MarkNow(conn, table=TABLE)  # type: ignore[arg-type]
    now.submit(["a", "b"], 0x200)
    assert conn.marked == ["a", "b"] and now.safe(0x200) == 0x200
    off: Marker = Unmarked()
    off.submit(["c"], 0x300)
    assert off.safe(0x300) == 0x300
