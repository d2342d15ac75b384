"""The line's alarms: what needs a person now, judged from one :class:`Observed` snapshot (the live state in
Redis, the workers' heartbeats, whether the broker, Redis and SQL answer). Pure functions, no I/O: the
snapshot is taken by :mod:`.alarm_watch`, which also exports every alarm as the Prometheus gauge
``linewatch_alarm_active{alarm=<kind>, subject=<camera, line, worker or store>}``.

Kinds, their subject and severity (``critical``: the line is not inspected, or not as it should be;
``warning``: inspected, but something needs care):

=====================  ========  ========  =================================================================
kind                   subject   severity  raised when
=====================  ========  ========  =================================================================
``inspection_behind``  camera    critical  its oldest unprocessed frame is older than ``behind_after_s``
``worker_stalled``     worker    critical  no heartbeat for ``heartbeat_stale_s`` (paused, hung, killed or cut
                                           off from Redis), or the worker reports a stall or a store it waits for
``no_worker``          detector  critical  no worker heartbeat at all while a camera reported in the last hour
``store_unreachable``  store     critical  ``broker``, ``redis`` or ``sql`` does not answer the dashboard, or a
                                           worker waits for it
``defect_rate``        line      critical  defects / inspected over ``defect_rate_window_s`` (processing time)
                                           above the line's limit, with at least ``defect_rate_min_frames``
``model_rollout``      worker    critical  a live worker does not run a product's active version (or has not
                                           heard it announced) 60 s after the activation, each product compared
                                           on its own (:mod:`.model_review`)
``image_store_full``   worker    warning   kept frames cannot be written (inspected and recorded without them)
``clock_skew``         camera    warning   the camera's clock disagrees with the frames' arrival
                                           (:mod:`linewatch.contracts.clock`)
``drift``              camera    warning   the drift monitor says the camera's images moved (lighting, focus):
                                           the hook :func:`drift`
=====================  ========  ========  =================================================================

Backlog (the age of a camera's oldest unprocessed frame) is estimated from its newest result: that frame's
end-to-end latency when processed, plus the time since, while the consumer group reports lag on the camera's
partition (the next frame waits since at most then); zero without lag, None when no worker reports the
partition.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Literal

from linewatch.contracts.clock import ClockRule
from linewatch.contracts.dashboard_settings import AlarmSettings
from linewatch.contracts.live_state import WORKER_STALE_S, Counts
from linewatch.contracts.messages import InspectionResult

from .model_review import TOPIC_SUBJECT, UNKNOWN, disagreements
from .views import skew_text
from .windows import duration

KINDS = ("inspection_behind", "worker_stalled", "no_worker", "store_unreachable", "defect_rate", "model_rollout",
         "image_store_full", "clock_skew", "drift")
STORES = ("broker", "redis", "sql")
NO_WORKER_AFTER_CAMERA_S = 3600.0  # a camera quiet longer than this is a line stopped on purpose, not a lost worker
DRIFT_STATE_MAX_AGE_S = 900.0  # a drift state not renewed for 15 min is a camera that stopped sending, not an alarm


@dataclass(frozen=True)
class Alarm:
    """One active alarm: ``kind`` (one of :data:`KINDS`), ``subject`` (camera, line, worker or store id),
    ``severity`` and an operator's sentence; ``value`` is the measured figure (seconds, a rate) where one exists."""

    kind: str
    subject: str
    severity: Literal["critical", "warning"]
    text: str
    value: float | None = None


@dataclass
class CameraView:
    """What the live state says of one camera at ``Observed.at``.

    ``seen``: its last processing time (Unix s); ``skew_ms``/``skewed``: its clock skew and the frames timed
    from arrival; ``latest``: its newest result; ``lag``: consumer lag (frames) of its partition summed over
    the workers' heartbeats, None when no heartbeat names it; ``recent``: ``(processed_at Unix s, end-to-end
    latency s)`` of its results processed in the last minute.
    """

    camera_id: str
    line_id: str
    seen: float
    skew_ms: float = 0.0
    skewed: int = 0
    latest: InspectionResult | None = None
    lag: int | None = None
    recent: list[tuple[float, float]] = field(default_factory=list)

    def backlog_s(self, now: float) -> float | None:
        """Estimated age (s) of the oldest frame not yet processed (see the module docstring), or None."""
        if self.latest is None or self.lag is None:
            return None
        if self.lag <= 0:
            return 0.0
        return self.latest.latency.total_ms / 1000 + max(0.0, now - self.latest.processed_at.timestamp())

    def rate_per_s(self, span_s: float = 60.0) -> float:
        """Frames processed per second over the last ``span_s`` seconds of :attr:`recent`."""
        return len(self.recent) / span_s

    def latency_quantiles_s(self) -> tuple[float, float] | None:
        """End-to-end latency p50 and p99 (s) of the results of the last minute; None without any."""
        values = sorted(latency for _, latency in self.recent)
        if not values:
            return None
        if len(values) == 1:
            return values[0], values[0]
        cuts = statistics.quantiles(values, n=100, method="inclusive")  # cuts[k-1] is the k-th percentile
        return cuts[49], cuts[98]


@dataclass
class Observed:
    """One snapshot of the line at ``at`` (Unix s). ``unreachable``: store -> why it did not answer;
    ``cameras``/``workers``/``line_counts`` are empty when Redis did not answer; ``line_counts``: per line over
    the defect-rate window; ``drift``: camera_id -> the drift monitor's state (see :func:`drift`); ``registry``:
    product -> the registry's active version of that product and its activation time (Unix s); empty when none is
    active or SQL did not answer."""

    at: float
    cameras: dict[str, CameraView] = field(default_factory=dict)
    workers: list[dict] = field(default_factory=list)
    line_counts: dict[str, Counts] = field(default_factory=dict)
    unreachable: dict[str, str] = field(default_factory=dict)
    drift: dict[str, dict] = field(default_factory=dict)
    registry: dict[str, tuple[str, float | None]] = field(default_factory=dict)


def evaluate(seen: Observed, settings: AlarmSettings, clock: ClockRule) -> list[Alarm]:
    """Every active alarm in ``seen``, critical first, then by kind (:data:`KINDS` order) and subject."""
    alarms = (stores(seen) + behind(seen, settings) + workers(seen, settings) + defect_rates(seen, settings)
              + rollout(seen) + clocks(seen, clock) + drift(seen))
    order = {kind: i for i, kind in enumerate(KINDS)}
    return sorted(alarms, key=lambda a: (a.severity != "critical", order[a.kind], a.subject))


def subjects(seen: Observed) -> set[str] | None:
    """Every subject ``seen`` judges (stores, ``detector``, the models topic, its cameras, workers and lines): an
    alarm whose subject is not among them has no state any more (a worker that left, a camera whose live state
    expired). None when Redis did not answer: its cameras, workers and lines are unknown then, not gone."""
    if "redis" in seen.unreachable:
        return None
    return {*STORES, "detector", TOPIC_SUBJECT, *seen.cameras, *seen.drift, *seen.line_counts,
            *(str(w.get("worker_id")) for w in seen.workers)}


def stores(seen: Observed) -> list[Alarm]:
    """``store_unreachable`` for each store that did not answer the dashboard or that a worker waits for."""
    why = dict(seen.unreachable)
    for w in seen.workers:
        waiting = str(w.get("waiting_on") or "")  # "kafka 45 s", "sql 12 s" (worker.waiting_on)
        store = {"kafka": "broker", "sql": "sql", "redis": "redis"}.get(waiting.split(" ")[0])
        if store and store not in why:
            why[store] = f"worker {w.get('worker_id')} waits for it ({waiting})"
    names = {"broker": "Kafka broker", "redis": "Redis (live state)", "sql": "SQL database (the record)"}
    return [Alarm("store_unreachable", s, "critical", f"{names[s]} unreachable: {why[s]}") for s in STORES if s in why]


def behind(seen: Observed, settings: AlarmSettings) -> list[Alarm]:
    """``inspection_behind`` for each camera whose backlog is older than ``behind_after_s``."""
    out = []
    for cam in seen.cameras.values():
        age = cam.backlog_s(seen.at)
        if age is not None and age > settings.behind_after_s:
            out.append(Alarm("inspection_behind", cam.camera_id, "critical",
                             f"Inspection behind on camera {cam.camera_id} (line {cam.line_id}): the oldest "
                             f"unprocessed frame is {duration(age)} old, {cam.lag:,} frames waiting", age))
    return out


def workers(seen: Observed, settings: AlarmSettings) -> list[Alarm]:
    """``worker_stalled``, ``image_store_full`` per worker; ``no_worker`` when none sends heartbeats."""
    out = []
    for w in seen.workers:
        wid = str(w.get("worker_id"))
        silent = seen.at - float(w.get("last_seen") or 0)
        if silent > settings.heartbeat_stale_s:
            what = "paused or hung" if silent <= WORKER_STALE_S else "paused, hung or gone"
            out.append(Alarm("worker_stalled", wid, "critical",
                             f"Worker {wid} stalled: no heartbeat for {duration(silent)} ({what}; its partitions "
                             "are not inspected until it resumes or the group gives them to another worker)", silent))
            continue  # what its last heartbeat says is stale
        if w.get("stalled"):
            out.append(Alarm("worker_stalled", wid, "critical", f"Worker {wid} {w['stalled']}"))
        images = w.get("image_store") or {}
        if images.get("full"):
            out.append(Alarm("image_store_full", wid, "warning",
                             f"Image store full on worker {wid} ({100 * float(images.get('free_ratio', 0)):.1f}% "
                             "free, nothing left that retention may remove): frames are inspected and recorded "
                             "without their images. Free space or lower images.max_age_days."))
    recent = [c for c in seen.cameras.values() if seen.at - c.seen < NO_WORKER_AFTER_CAMERA_S]
    if not seen.workers and recent and "redis" not in seen.unreachable:
        last = max(c.seen for c in recent)
        out.append(Alarm("no_worker", "detector", "critical",
                         f"No detector worker is running: no heartbeat, and cameras reported until "
                         f"{duration(seen.at - last)} ago. Start one with `linewatch detect`.", seen.at - last))
    return out


def defect_rates(seen: Observed, settings: AlarmSettings) -> list[Alarm]:
    """``defect_rate`` for each line over its limit in the defect-rate window."""
    out = []
    for line, counts in sorted(seen.line_counts.items()):
        limit = settings.defect_rate_limit(line)
        rate = counts.defect_rate
        if rate is not None and counts.inspected >= settings.defect_rate_min_frames and rate > limit:
            out.append(Alarm("defect_rate", line, "critical",
                             f"Defect rate on line {line}: {rate:.1%} of {counts.inspected:,} frames in the last "
                             f"{duration(settings.defect_rate_window_s)} (limit {limit:.1%})", rate))
    return out


def rollout(seen: Observed) -> list[Alarm]:
    """``model_rollout`` for each live worker not on a product's active version once that activation's rollout
    window is over, product by product (:func:`.model_review.disagreements`: a worker is compared with the active
    version of each product it reports; the models topic itself is checked by the Models page). A worker behind on
    two products raises one alarm per product, under its id."""
    return [Alarm("model_rollout", d.subject, "critical", d.text)
            for product in sorted(seen.registry)
            for d in disagreements(*seen.registry[product], UNKNOWN, seen.workers, seen.at)]


def clocks(seen: Observed, clock: ClockRule) -> list[Alarm]:
    """``clock_skew`` for each camera whose newest frame's clock skew is beyond the tolerance."""
    return [Alarm("clock_skew", c.camera_id, "warning",
                  f"Camera {c.camera_id}: its clock is {skew_text(c.skew_ms)} ({c.skewed:,} frames timed from "
                  "their arrival); counts and latency use the workers' clock. Fix its time sync (NTP).",
                  c.skew_ms / 1000)
            for c in seen.cameras.values() if not clock.trusted(c.skew_ms)]


def drift(seen: Observed) -> list[Alarm]:
    """The hook of the per-camera drift (lighting, exposure) monitor: ``drift`` for each camera whose state in
    :attr:`Observed.drift` is ``drifting``, with its one-line ``message`` and its ``worst_z`` as the value (the
    state of ``linewatch.detector.drift.DriftMonitor.state``), written by the workers with each batch of the
    camera's frames. A state older than :data:`DRIFT_STATE_MAX_AGE_S` is not an alarm: the camera stopped sending
    while in drift, and its lamps may have been fixed since (its next frames say)."""
    out = []
    for camera_id, state in sorted(seen.drift.items()):
        fresh = isinstance(state, dict) and seen.at - float(state.get("at") or 0) <= DRIFT_STATE_MAX_AGE_S
        if fresh and state.get("drifting"):
            z = state.get("worst_z")
            out.append(Alarm("drift", camera_id, "warning",
                             f"Camera {camera_id}: {state.get('message') or 'images drifted from training'}",
                             float(z) if isinstance(z, int | float) else None))
    return out
