"""The alarms, evaluated for the whole dashboard process: one daemon thread observes the line every
``dashboard.alarms.period_s`` (the live state and heartbeats in Redis, ``SELECT 1`` on SQL, a TCP connection to
the Kafka bootstrap servers), judges it with :func:`.alarms.evaluate`, keeps the result for the pages' banner and
sets the Prometheus gauges of :mod:`.telemetry`, so alerts fire whether or not anybody has a page open.

Started by the launcher (:mod:`.launch`) before the first visit, or by the first page that asks
(:func:`watch`). A store that does not answer is an alarm, never an exception: the thread never dies of one.
"""

from __future__ import annotations

import datetime as dt
import logging
import socket
import threading
import time
from collections import defaultdict

from sqlalchemy import select, text

from linewatch.contracts.clock import ClockRule
from linewatch.contracts.database import make_engine
from linewatch.contracts.live_state import LiveStateReader, connect_settings
from linewatch.contracts.schema import ModelVersion
from linewatch.contracts.settings import Settings

from . import telemetry
from .alarms import STORES, Alarm, CameraView, Observed, evaluate, subjects
from .model_review import unix_time

log = logging.getLogger(__name__)

BROKER_CONNECT_TIMEOUT_S = 2.0


def broker_problem(bootstrap_servers: str, timeout_s: float = BROKER_CONNECT_TIMEOUT_S) -> str | None:
    """Why no Kafka bootstrap server accepts a TCP connection (``host:port,...``), or None when one does (or none
    is configured: the embedded broker of ``linewatch up`` is then not known to this process)."""
    problems = []
    for address in filter(None, (a.strip() for a in bootstrap_servers.split(","))):
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout=timeout_s).close()
            return None
        except (OSError, ValueError) as exc:
            problems.append(f"{address}: {exc}")
    return "; ".join(problems) or None


class AlarmWatch:
    """Evaluates the alarms every ``settings.dashboard.alarms.period_s`` (see the module docstring)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.rules = settings.dashboard.alarms
        self.clock = ClockRule(settings.detector.clock_ahead_s, settings.detector.clock_behind_s)
        self.reader = LiveStateReader(connect_settings(settings.redis)) if settings.redis.url else None
        self.engine = make_engine(settings.database_url, pool_size=1)
        self.lock = threading.Lock()
        self.alarms: list[Alarm] = []
        self.observed: Observed | None = None
        self.evaluated_at: float | None = None
        self._raised: set[tuple[str, str, str]] = set()  # alarms raised, cleared ones (at 0) until their subject goes
        self._series: dict[object, set[tuple[str, ...]]] = defaultdict(set)
        self.stop = threading.Event()

    def current(self) -> tuple[list[Alarm], Observed | None, float | None]:
        """The alarms of the last evaluation, its snapshot and its time (Unix s; None before the first)."""
        with self.lock:
            return list(self.alarms), self.observed, self.evaluated_at

    def start(self) -> AlarmWatch:
        threading.Thread(target=self._run, name="alarm-watch", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 -- a bug in one evaluation must not end the alarms for good
                log.exception("alarm evaluation failed")
            self.stop.wait(max(0.1, self.rules.period_s - (time.monotonic() - started)))

    def tick(self) -> list[Alarm]:
        """Observe, evaluate and publish once; returns the alarms."""
        seen = self.observe()
        alarms = evaluate(seen, self.rules, self.clock)
        with self.lock:
            self.alarms, self.observed, self.evaluated_at = alarms, seen, seen.at
        self._publish(seen, alarms)
        return alarms

    def observe(self) -> Observed:
        """One :class:`~.alarms.Observed` snapshot of the line now."""
        seen = Observed(at=time.time())
        problem = broker_problem(self.settings.kafka.bootstrap_servers)
        if problem:
            seen.unreachable["broker"] = problem
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 -- any failure is the alarm's reason
            seen.unreachable["sql"] = _reason(exc)
        try:  # a record without the registry's table yet (not migrated) is no SQL outage: no rollout check
            seen.registry = active_versions(self.engine)
        except Exception:  # noqa: BLE001, S110 -- unreachable is judged above
            pass
        if self.reader is None:
            seen.unreachable["redis"] = "no Redis is configured (LINEWATCH_REDIS__URL)"
            return seen
        try:
            self._live(seen)
        except Exception as exc:  # noqa: BLE001 -- redis.RedisError, or a result that no longer parses
            seen.unreachable["redis"] = _reason(exc)
            seen.cameras, seen.workers, seen.line_counts = {}, [], {}
        return seen

    def _live(self, seen: Observed) -> None:
        reader = self.reader
        seen.workers = reader.workers()
        lag: dict[str, int] = defaultdict(int)
        for w in seen.workers:
            for partition, frames in (w.get("lag") or {}).items():
                lag[partition] += int(frames)
        recent: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for r in reader.recent_since(60.0):
            recent[r.frame.camera_id].append((r.processed_at.timestamp(), r.latency.total_ms / 1000))
        for cam, info in reader.camera_states().items():
            latest, _ = reader.latest(cam, overlay=False)
            partition = f"{latest.frame.topic}/{latest.frame.partition}" if latest and latest.frame.topic else None
            seen.cameras[cam] = CameraView(cam, info["line_id"], info["seen"], info["skew_ms"], info["skewed"],
                                           latest, lag.get(partition) if partition else None, recent.get(cam, []))
        end = dt.datetime.fromtimestamp(seen.at, dt.UTC)
        start = end - dt.timedelta(seconds=self.rules.defect_rate_window_s)
        for line in sorted({c.line_id for c in seen.cameras.values()}):
            seen.line_counts[line] = reader.totals("line", line, start, end)
        seen.drift = reader.drift()  # camera_id -> the drift monitor's state (drifting, message, worst_z, at)

    def _publish(self, seen: Observed, alarms: list[Alarm]) -> None:
        now = {(a.kind, a.subject, a.severity) for a in alarms}
        self._raised |= now
        known = subjects(seen)
        # A cleared alarm reads 0 while its subject is still judged; once the subject is gone its series goes too
        # (else every worker or camera that ever alarmed would be exported, at 0, for the dashboard's lifetime).
        gone = set() if known is None else {labels for labels in self._raised - now if labels[1] not in known}
        for labels in gone:
            telemetry.ALARM_ACTIVE.remove(*labels)
        self._raised -= gone
        for labels in self._raised:
            telemetry.ALARM_ACTIVE.labels(*labels).set(1 if labels in now else 0)
        for store in STORES:
            telemetry.STORE_REACHABLE.labels(store).set(0 if store in seen.unreachable else 1)
        cams = seen.cameras.values()
        self._set(telemetry.CAMERA_BACKLOG, {(c.camera_id, c.line_id): c.backlog_s(seen.at) for c in cams})
        self._set(telemetry.CAMERA_LAG, {(c.camera_id, c.line_id): c.lag for c in cams})
        self._set(telemetry.CAMERA_RATE, {(c.camera_id, c.line_id): c.rate_per_s() for c in cams})
        latency = {}
        for c in cams:
            q = c.latency_quantiles_s()
            if q is not None:
                latency[(c.camera_id, c.line_id, "0.5")], latency[(c.camera_id, c.line_id, "0.99")] = q
        self._set(telemetry.CAMERA_LATENCY, latency)
        self._set(telemetry.WORKER_HEARTBEAT_AGE,
                  {(str(w.get("worker_id")),): seen.at - float(w.get("last_seen") or 0) for w in seen.workers})
        self._set(telemetry.LINE_DEFECT_RATE, {(line,): c.defect_rate for line, c in seen.line_counts.items()})
        self._set(telemetry.LINE_DEFECT_RATE_LIMIT, {(line,): self.rules.defect_rate_limit(line)
                                                     for line in seen.line_counts})
        telemetry.ALARMS_EVALUATED.set(seen.at)

    def _set(self, gauge, values: dict[tuple[str, ...], float | None]) -> None:
        """Set ``gauge``'s series to ``values`` (None: unknown, no series) and remove the series of subjects
        gone since the last evaluation (a worker that left, a camera whose state expired)."""
        known = {k: v for k, v in values.items() if v is not None}
        for labels in self._series[gauge] - set(known):
            gauge.remove(*labels)
        for labels, value in known.items():
            gauge.labels(*labels).set(value)
        self._series[gauge] = set(known)


def active_versions(engine) -> dict[str, tuple[str, float | None]]:
    """product -> (its active version, activation time in Unix s) from the registry's table (one active version per
    product; should a race have left two, the one activated last counts)."""
    with engine.connect() as conn:
        rows = conn.execute(select(ModelVersion.product, ModelVersion.version, ModelVersion.activated_at)
                            .where(ModelVersion.status == "active").order_by(ModelVersion.activated_at)).all()
    return {r.product: (r.version, unix_time(r.activated_at)) for r in rows}


def _reason(exc: BaseException) -> str:
    first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"


_WATCH: AlarmWatch | None = None
_WATCH_LOCK = threading.Lock()


def watch(settings: Settings) -> AlarmWatch:
    """The process's alarm watch, started on the first call (later calls return it, whatever their settings)."""
    global _WATCH
    with _WATCH_LOCK:
        if _WATCH is None:
            _WATCH = AlarmWatch(settings).start()
        return _WATCH
