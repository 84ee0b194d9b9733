"""The relay: sessions (session.py) one after another until stopped.

One session holds the slot until an error; `run()` decides (errors.policy) whether to
retry with backoff, stand by for a busy slot, or stop with a hint. A replayed session
is harmless: publishes are deduplicated in Redis by (slot epoch, commit LSN, position).

    Relay.run → slots.ensure → session.run_session → session.assemble (the stages)
                                                   → loop.RelayLoop.run
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from cdc.backoff import Backoff
from cdc.errors import Action, CdcError, SlotBusy, policy
from cdc.observe.metrics import Metrics
from cdc.pg import slots
from cdc.pipeline.session import run_session
from cdc.settings import Settings

log = logging.getLogger(__name__)
RESTART_AFTER_S = 30  # a session that streamed this long restarts without backoff


Session = Callable[..., None]  # run_session's signature: (settings, metrics, stop, *, ...)


class Relay:
    """Run sessions until stopped: retry transient errors, stand by while the slot is busy.

    `ensure` (the slot) and `session` default to the real ones; tests pass fakes.
    """

    def __init__(
        self, settings: Settings, *, metrics: Metrics, stop: threading.Event,
        ensure: Callable[[Settings], object] = slots.ensure, session: Session = run_session,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stop = stop
        self._ensure = ensure
        self._session = session

    def run(self, *, once: bool = False) -> None:
        """Ensure the slot, then stream; return on stop or when `once` has drained."""
        backoff = Backoff(base=0.1, cap=self.settings.standby_max_backoff_s)
        redis_nodes: list[tuple[str, int]] = []  # a Redis Cluster's nodes, kept across sessions
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                # Every attempt: a slot dropped under a running relay is created again.
                self._ensure(self.settings)
                self._session(
                    self.settings, self.metrics, self.stop, redis_nodes=redis_nodes, once=once
                )
                return
            except SlotBusy as e:
                log.info("standing by: %s; retrying", e)
            except CdcError as e:
                if policy(e) is Action.STOP:
                    raise
                log.warning("%s; retrying with backoff", e.one_line())
            if time.monotonic() - started > RESTART_AFTER_S:  # it had streamed: start over gently
                backoff.reset()
            if backoff.wait(self.stop):
                return
