"""What a worker has stored: frames inspected and dead-lettered, and frames per second lately."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Throughput:
    """Counts of stored frames and their rate over the last ``window_s`` seconds.

    Written by the store stage and read by the heartbeat (different threads), hence the lock.
    """

    def __init__(self, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self.inspected = 0
        self.dead_lettered = 0
        self._events: list[tuple[float, int]] = []  # (when, inspected frames) of each stored batch
        self._lock = threading.Lock()

    def add(self, inspected: int, dead_lettered: int) -> None:
        """Count one stored batch: ``inspected`` results and ``dead_lettered`` frames."""
        with self._lock:
            self.inspected += inspected
            self.dead_lettered += dead_lettered
            self._events.append((self.clock(), inspected))

    def rate(self) -> float:
        """Frames inspected per second over the last ``window_s`` seconds."""
        now = self.clock()
        with self._lock:
            self._events = [(t, n) for t, n in self._events if now - t <= self.window_s]
            return sum(n for _, n in self._events) / self.window_s
