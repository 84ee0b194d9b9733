"""Exponential backoff with full jitter, as a small object."""

from __future__ import annotations

import random
import threading


class Backoff:
    """Sleep 0..min(cap, base·2^n) seconds between attempts; `reset()` after a success."""

    def __init__(self, *, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next_delay(self) -> float:
        """Return the next delay and count the attempt."""
        delay = random.uniform(0, min(self.cap, self.base * 2**self.attempt))
        self.attempt += 1
        return delay

    def wait(self, stop: threading.Event) -> bool:
        """Sleep the next delay unless `stop` is set first; return True when stopped."""
        return stop.wait(self.next_delay())

    def reset(self) -> None:
        """Start again from the base delay."""
        self.attempt = 0
