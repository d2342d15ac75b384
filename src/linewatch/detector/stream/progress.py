"""Whether a worker is making progress: the figures its heartbeat, ``/healthz`` and ``/readyz`` report.

A worker can be alive (its process answers, its heartbeat thread writes) and still blind: a batch that never
finishes storing, a consumer loop stuck in a call. Two clocks show it, both read without touching the
consumer (any thread may call :func:`progress`):

- the age of the oldest batch submitted and not yet committed (:class:`.offsets.Snapshot`), which grows
  only while batches stop moving through decode, inference and store;
- how long ago the main thread last went round its consumer loop (it polls at least every few hundred
  milliseconds, also while its batches are in flight, so a silent loop means a stuck call).

Either past ``stall_after_s`` makes the worker *stalled*: ``/healthz`` and ``/readyz`` answer 503 with the
reason (so an orchestrator replaces it), the heartbeat carries the reason, and the dashboard shows it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .offsets import Snapshot


@dataclass(frozen=True)
class Progress:
    """A worker's progress at one moment (seconds, from ``time.monotonic``; None: nothing to measure).

    ``pending_batches``: batches submitted and not committed; ``oldest_batch_age_s``: how long the oldest of
    them has been in flight; ``since_commit_s``: time since stored batches were last committed;
    ``loop_silent_s``: time since the consumer loop last went round.
    """

    pending_batches: int
    oldest_batch_age_s: float | None
    since_commit_s: float | None
    loop_silent_s: float

    def stalled(self, stall_after_s: float) -> str | None:
        """Why the worker counts as stalled (e.g. ``"stalled 45 s: oldest batch in flight"``), or None."""
        if self.oldest_batch_age_s is not None and self.oldest_batch_age_s > stall_after_s:
            return f"stalled {self.oldest_batch_age_s:.0f} s: oldest batch in flight"
        if self.loop_silent_s > stall_after_s:
            return f"stalled {self.loop_silent_s:.0f} s: consumer loop silent"
        return None

    def heartbeat_fields(self, stall_after_s: float) -> dict[str, Any]:
        """The heartbeat's progress keys: ``pending_batches``, ``oldest_batch_age_s``, ``since_commit_s``
        (rounded to 0.1 s, None when there is nothing to measure) and ``stalled`` (reason text or None)."""
        return {
            "pending_batches": self.pending_batches,
            "oldest_batch_age_s": _round(self.oldest_batch_age_s),
            "since_commit_s": _round(self.since_commit_s),
            "stalled": self.stalled(stall_after_s),
        }


def progress(snapshot: Snapshot, loop_at: float, now: float | None = None) -> Progress:
    """The progress shown by ``snapshot`` and the consumer loop's last round at ``loop_at``, as of ``now``
    (default ``time.monotonic()``, the clock of the tracker and of ``loop_at``)."""
    now = time.monotonic() if now is None else now
    oldest = snapshot.oldest_batch_at
    last = snapshot.last_commit_at
    return Progress(snapshot.pending, None if oldest is None else max(0.0, now - oldest),
                    None if last is None else max(0.0, now - last), max(0.0, now - loop_at))


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
