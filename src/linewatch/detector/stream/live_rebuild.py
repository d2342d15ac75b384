"""Live counts rebuilt from the record: per-minute counts in Redis are overwritten with what SQL holds.

SQL is exact (one row per frame, written before any live update); Redis can lose counts (a restart without
a snapshot, an outage longer than a worker's patience, a worker killed with updates still waiting). Every
``period_s`` one worker of the group (a Redis lock decides which) recounts the minutes that closed between
``settle_s`` and an hour ago, and every minute since the last recount that Redis took (after an outage or
while it was full); when Redis has come back empty it recounts ``rebuild_window_s`` at once. A row
committed more than an hour after it was processed (an SQL outage that long) is counted by the next
recount that reaches back to it: only after Redis comes back empty.
A minute closed less than ``settle_s`` ago is left to the increments, which :mod:`.live_sink` stops making
before the rebuild reaches that minute, so no frame is counted twice.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time

from sqlalchemy import case, func, select
from sqlalchemy.engine import Connection, Engine

from linewatch.contracts.live_state import LiveStateWriter
from linewatch.contracts.schema import Inspection, unix_seconds

from .live_sink import LiveSink

log = logging.getLogger(__name__)

RECENT_S = 3600  # the periodic recount's reach; older minutes are recounted only after Redis lost its data


def counts_by_minute(conn: Connection, start: dt.datetime, end: dt.datetime
                     ) -> dict[tuple[str, str, int], tuple[int, int]]:
    """Inspected frames and defects per camera and per line for each minute of processing time (Unix
    minutes, ``processed_at // 60``) with ``start <= processed_at < end``: ``(kind, ident, minute) ->
    (inspected, defects)``, ``kind`` ``camera`` or ``line``."""
    minute = (unix_seconds(Inspection.processed_at, conn.dialect.name) // 60).label("minute")
    defect = func.sum(case((Inspection.verdict == "defect", 1), else_=0))
    query = (select(Inspection.camera_id, Inspection.line_id, minute, func.count(), defect)
             .where(Inspection.processed_at >= start, Inspection.processed_at < end)
             .group_by(Inspection.camera_id, Inspection.line_id, minute))
    out: dict[tuple[str, str, int], tuple[int, int]] = {}
    for camera_id, line_id, m, inspected, defects in conn.execute(query):
        for key in (("camera", camera_id, int(m)), ("line", line_id, int(m))):
            before = out.get(key, (0, 0))
            out[key] = (before[0] + int(inspected), before[1] + int(defects or 0))
    return out


class LiveRebuilder:
    """Recounts closed minutes from SQL into Redis (see the module docstring); :meth:`tick` is called by a
    worker thread every ``period_s`` and never raises."""

    def __init__(self, engine: Engine, live: LiveStateWriter, owner: str, settle_s: float, rebuild_window_s: float,
                 period_s: float | None = None):
        self.engine = engine
        self.live = live
        self.owner = owner
        self.settle_s = settle_s
        self.rebuild_window_s = rebuild_window_s
        self.period_s = period_s if period_s is not None else min(30.0, settle_s / 2)
        self.next_at = 0.0

    def tick(self) -> int | None:
        """Recount now if it is due and this worker holds the lock; returns how many minutes were written."""
        if time.monotonic() < self.next_at:
            return None
        self.next_at = time.monotonic() + self.period_s
        try:
            if not self.live.try_lock(self.owner, ttl_s=max(5.0, self.period_s / 2)):
                return None
            now = dt.datetime.now(dt.UTC)
            closed = (now - dt.timedelta(seconds=self.settle_s)).replace(second=0, microsecond=0)
            oldest = closed - dt.timedelta(seconds=self.rebuild_window_s)
            through = self.live.rebuilt_through()  # None: Redis came back empty (or never had counts)
            start = closed - dt.timedelta(seconds=RECENT_S)
            behind = through is None or through < start  # Redis missed recounts (empty, away or full)
            if behind:  # also every minute since the last recount that got through
                start = max(oldest, through or oldest)
            with self.engine.connect() as conn:
                counts = counts_by_minute(conn, start, closed)
            self.live.overwrite_counts(counts)
            self.live.mark_rebuilt_through(closed)
            if behind:
                log.info("live counts rebuilt from the record since %s: %d camera/line minutes", start.isoformat(),
                         len(counts))
            return len(counts)
        except Exception as exc:  # noqa: BLE001 -- Redis or SQL away: the next tick tries again
            log.debug("live counts not rebuilt now: %s", exc)
            return None


def keep_live_state(sink: LiveSink, rebuilder: LiveRebuilder, stop: threading.Event, period_s: float = 1.0) -> None:
    """A worker thread's loop until ``stop``: write what waits for Redis, and recount closed minutes when due."""
    while not stop.wait(period_s):
        sink.flush(wait_s=period_s)
        rebuilder.tick()
