"""Relay.run over a fake session: what each error does (errors.policy) across sessions."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from cdc.errors import ConfigError, SinkError, SlotBusy, SourceError
from cdc.observe.metrics import Metrics
from cdc.pipeline.relay import Relay
from cdc.settings import Settings


def relay(outcomes: list[BaseException | None]) -> tuple[Relay, list[Any], threading.Event]:
    """Return a relay whose sessions end as `outcomes` say (None: drained), one by one."""
    calls: list[Any] = []
    stop = threading.Event()

    def session(settings: Settings, metrics: Metrics, stop_: threading.Event, *,
                redis_nodes: list[tuple[str, int]], once: bool) -> None:
        calls.append(("session", once, id(redis_nodes)))
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    def ensure(settings: Settings) -> bool:
        calls.append(("ensure",))
        return False

    s = Settings(standby_max_backoff_s=0.01)
    return Relay(s, metrics=Metrics(), stop=stop, ensure=ensure, session=session), calls, stop


def test_transient_errors_and_a_busy_slot_are_retried_until_a_session_drains() -> None:
    r, calls, _ = relay([SlotBusy("busy"), SinkError("Redis down"), SourceError("PG down"), None])
    r.run(once=True)
    sessions = [c for c in calls if c[0] == "session"]
    assert len(sessions) == 4 and calls.count(("ensure",)) == 4  # the slot before every one
    assert all(c[1] for c in sessions) and len({c[2] for c in sessions}) == 1  # nodes kept


@pytest.mark.parametrize("error", [ConfigError("CDC_OUTBOX_TABLE: no table"), RuntimeError("bug")])
def test_an_error_that_needs_an_operator_stops_the_relay(error: Exception) -> None:
    r, calls, _ = relay([error, None])
    with pytest.raises(type(error)):
        r.run()
    assert len([c for c in calls if c[0] == "session"]) == 1


def test_a_stop_during_the_backoff_ends_the_relay_without_another_session() -> None:
    r, calls, stop = relay([SinkError("Redis down"), None])
    stop.set()  # as if SIGTERM arrived while the session failed
    r.run()
    assert calls == []  # stopped before the first attempt even starts
    r2, calls2, stop2 = relay([SinkError("Redis down")])
    original = r2._session

    def failing_then_stopping(*a: Any, **k: Any) -> None:
        stop2.set()
        original(*a, **k)

    r2._session = failing_then_stopping
    r2.run()
    assert len([c for c in calls2 if c[0] == "session"]) == 1

