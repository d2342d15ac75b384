"""Live state that never holds the line: a worker's writes to Redis wait at most ``redis.wait_s``.

When Redis is down, read-only or out of memory, a stored batch's live updates wait here (bounded) and the
batch is committed without them; they are written when Redis answers again. Updates for minutes that the
rebuild from the SQL record (:mod:`.live_rebuild`) is about to cover are dropped instead of written, so a
frame is never counted twice: once by its late increment and once by the rebuild.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass

import redis

from linewatch.contracts.live_state import LiveStateWriter, PartlyRecorded
from linewatch.contracts.messages import InspectionResult

from .telemetry import LIVE_LEFT_TO_REBUILD, LIVE_PENDING, LIVE_UNAVAILABLE

log = logging.getLogger(__name__)


@dataclass
class _Update:
    results: list[InspectionResult]
    overlays: dict[int, bytes]
    dead_reasons: list[str]
    at: dt.datetime


class LiveSink:
    """Writes live updates to Redis, waiting at most ``wait_s`` for it; thread-safe.

    Args:
        live: the Redis writer.
        wait_s: longest :meth:`write` waits for Redis before keeping the update for later.
        settle_s: counts of a minute closed this long ago come from the SQL rebuild; a kept update of such a
            minute is dropped (its dead-letter counts, which SQL does not hold, are still written).
        cap: most results kept while Redis is away; beyond it the oldest are dropped (the rebuild restores
            their counts).
    """

    def __init__(self, live: LiveStateWriter, wait_s: float, settle_s: float, cap: int = 20_000):
        self.live = live
        self.wait_s = wait_s
        self.settle_s = settle_s
        self.cap = cap
        self.pending: collections.deque[_Update] = collections.deque()
        self.drift: dict[str, dict] = {}  # cameras' newest drift states not written yet (the newest wins)
        self.lock = threading.Lock()
        self.down = False  # the last write to Redis failed
        self.retry_at = 0.0  # while down, writes do not wait for Redis before this moment (monotonic)

    def write(self, results: list[InspectionResult], overlays: dict[int, bytes], dead_reasons: list[str],
              drift: dict[str, dict] | None = None) -> None:
        """Queue one stored batch's live updates (and its cameras' drift states) and write what Redis takes within
        ``wait_s``. Never raises."""
        if not results and not dead_reasons and not drift:
            return
        with self.lock:
            if results or dead_reasons:
                self.pending.append(_Update(list(results), dict(overlays), list(dead_reasons),
                                            dt.datetime.now(dt.UTC)))
            self.drift.update(drift or {})
            self._trim()
        self.flush(self.wait_s)

    def flush(self, wait_s: float = 0.0) -> bool:
        """Write the kept updates, oldest first, for about ``wait_s`` (one Redis call can take up to the client's
        socket timeout longer); True when none is left. What is not written by then waits for the next call."""
        deadline = time.monotonic() + wait_s
        if not self.lock.acquire(timeout=wait_s):  # another thread is writing: it carries on
            return False
        try:
            if self.down and time.monotonic() < self.retry_at:
                return False  # Redis failed a moment ago: do not wait on it again yet
            while self.pending:
                try:
                    self._write(self.pending[0])
                except redis.RedisError as exc:
                    self._failed(exc)
                    if time.monotonic() >= deadline:
                        return False
                    time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                    continue
                self.pending.popleft()
                if self.down:
                    log.info("live state: Redis answers again")
                self.down = False
                if self.pending and time.monotonic() >= deadline:
                    LIVE_PENDING.set(sum(len(u.results) for u in self.pending))
                    return False
            if self.drift:
                try:
                    self.live.drift(self.drift)
                except redis.RedisError as exc:
                    self._failed(exc)
                    return False
                self.drift = {}
            LIVE_PENDING.set(0)
            LIVE_UNAVAILABLE.set(0)
            return True
        finally:
            self.lock.release()

    def _write(self, update: _Update) -> None:
        cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self.settle_s / 2)
        fresh = [i for i, r in enumerate(update.results) if _minute_end(r.processed_at) > cutoff]
        if len(fresh) < len(update.results):
            LIVE_LEFT_TO_REBUILD.inc(len(update.results) - len(fresh))
            update.overlays = {j: update.overlays[i] for j, i in enumerate(fresh) if i in update.overlays}
            update.results = [update.results[i] for i in fresh]
        if update.results:
            try:
                self.live.record(update.results, update.overlays)
            except PartlyRecorded as exc:  # keep only what Redis refused, so nothing is counted twice
                left = [i for i in range(len(update.results)) if i not in exc.done]
                update.overlays = {j: update.overlays[i] for j, i in enumerate(left) if i in update.overlays}
                update.results = [update.results[i] for i in left]
                raise
            update.results, update.overlays = [], {}  # written: not again if the dead letters fail next
        if update.dead_reasons:
            self.live.dead_lettered(update.dead_reasons, update.at)

    def _failed(self, exc: BaseException) -> None:
        if not self.down:
            log.warning("live state: Redis refused an update (%s: %s); batches are committed without live state "
                        "until it answers", type(exc).__name__, exc)
        self.down = True
        self.retry_at = time.monotonic() + 2.0
        LIVE_PENDING.set(sum(len(u.results) for u in self.pending))
        LIVE_UNAVAILABLE.set(1)

    def _trim(self) -> None:
        kept = sum(len(u.results) for u in self.pending)
        while kept > self.cap and len(self.pending) > 1:
            dropped = self.pending.popleft()
            kept -= len(dropped.results)
            LIVE_LEFT_TO_REBUILD.inc(len(dropped.results))
            if dropped.dead_reasons:
                log.warning("live state: %d dead-letter counts dropped while Redis was away",
                            len(dropped.dead_reasons))


def _minute_end(moment: dt.datetime) -> dt.datetime:
    return moment.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
