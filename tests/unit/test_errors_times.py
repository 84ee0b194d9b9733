"""The error policy, LSN text, operator times and backoff: pure functions."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from cdc.backoff import Backoff
from cdc.errors import (
    Action,
    CdcError,
    ConfigError,
    EventError,
    EventTooLarge,
    MigrationError,
    SinkError,
    SlotBusy,
    SourceError,
    StoreError,
    policy,
)
from cdc.pg import lsn
from cdc.when import parse_duration, parse_time


@pytest.mark.parametrize(("error", "action"), [
    (EventError("x"), Action.DEAD_LETTER), (EventTooLarge("x", size=9), Action.DEAD_LETTER),
    (SinkError("x"), Action.RETRY), (SourceError("x"), Action.RETRY),
    (SlotBusy("x"), Action.RETRY), (ConfigError("x"), Action.STOP),
    (MigrationError("x"), Action.STOP), (StoreError("x"), Action.STOP),
    (CdcError("x"), Action.STOP), (RuntimeError("x"), Action.STOP),
])
def test_policy_sorts_every_error_into_one_of_three(error: Exception, action: Action) -> None:
    assert policy(error) is action


def test_one_line_carries_the_hint() -> None:
    assert ConfigError("a\n b", hint="do c").one_line() == "a b (fix: do c)"


@pytest.mark.parametrize("text", ["0/0", "16/B374D848", "FFFFFFFF/FFFFFFFF"])
def test_lsn_text_round_trips(text: str) -> None:
    assert lsn.format(lsn.parse(text)) == text


def test_lsn_order_is_integer_order_and_junk_is_refused() -> None:
    assert lsn.parse("1/0") > lsn.parse("0/FFFFFFFF")
    with pytest.raises(ValueError):
        lsn.parse("12345")


def test_durations_and_times() -> None:
    assert parse_duration("90m") == timedelta(minutes=90)
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert parse_time("2h", now=now) == now - timedelta(hours=2)
    assert parse_time("2026-12-01T09:30:00.25+00:00").microsecond == 250000
    assert parse_time("2026-12-01T09:30:00").tzinfo is UTC
    for bad in ("now", "7 days", ""):
        with pytest.raises(ConfigError):
            parse_time(bad)


def test_backoff_grows_to_its_cap_and_resets() -> None:
    b = Backoff(base=0.1, cap=0.4)
    delays = [b.next_delay() for _ in range(8)]
    assert all(0 <= d <= 0.4 for d in delays) and b.attempt == 8
    b.reset()
    assert b.attempt == 0 and b.next_delay() <= 0.1
    stop = threading.Event()
    stop.set()
    assert Backoff(base=10, cap=10).wait(stop) is True  # a set stop returns at once
