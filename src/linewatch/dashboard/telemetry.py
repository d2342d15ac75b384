"""Prometheus metrics of the dashboard, served with ``/healthz`` and ``/readyz`` beside Streamlit.

Streamlit runs every browser session's script in threads of one process, so these counters are
process-wide. :func:`serve` starts the endpoint from the launcher, before the first visit, so a
probe sees the dashboard whether or not anybody has opened it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram

from linewatch.contracts.settings import Settings

PAGE_VIEWS = Counter("linewatch_dashboard_page_views_total", "Full page runs, per page", ["page"])
LABELS = Counter("linewatch_dashboard_labels_total", "Operator labels written", ["label"])
RETRAIN_REQUESTS = Counter("linewatch_dashboard_retrain_requests_total", "Retraining jobs requested")
STORE_ERRORS = Counter("linewatch_dashboard_store_errors_total",
                       "Page runs cut short by a Redis or SQL failure", ["store"])
QUERY_SECONDS = Histogram("linewatch_dashboard_query_seconds", "SQL statement time, seconds",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
# The alarms (dashboard/alarms.py) and the figures they are judged on, set by dashboard/alarm_watch.py every
# dashboard.alarms.period_s; deploy/prometheus/ alerts and deploy/grafana/ graphs are built on these names.
ALARM_ACTIVE = Gauge("linewatch_alarm_active", "1 while the alarm is raised, 0 once it cleared",
                     ["alarm", "subject", "severity"])
ALARMS_EVALUATED = Gauge("linewatch_alarms_evaluated_timestamp_seconds", "When the alarms were last evaluated, Unix s")
STORE_REACHABLE = Gauge("linewatch_store_reachable", "1 while the store answers the dashboard (broker, redis, sql)",
                        ["store"])
CAMERA_BACKLOG = Gauge("linewatch_camera_backlog_seconds", "Estimated age of the camera's oldest unprocessed frame, s",
                       ["camera_id", "line_id"])
CAMERA_LAG = Gauge("linewatch_camera_consumer_lag_frames", "Consumer lag of the camera's partition, frames",
                   ["camera_id", "line_id"])
CAMERA_RATE = Gauge("linewatch_camera_frames_per_second", "Frames processed per second over the last minute",
                    ["camera_id", "line_id"])
CAMERA_LATENCY = Gauge("linewatch_camera_latency_seconds", "End-to-end latency over the last minute, s (p50, p99)",
                       ["camera_id", "line_id", "quantile"])
WORKER_HEARTBEAT_AGE = Gauge("linewatch_worker_heartbeat_age_seconds", "Time since the worker's last heartbeat, s",
                             ["worker_id"])
LINE_DEFECT_RATE = Gauge("linewatch_line_defect_rate", "Defects / inspected in the defect-rate window", ["line_id"])
LINE_DEFECT_RATE_LIMIT = Gauge("linewatch_line_defect_rate_limit", "The line's defect-rate alarm limit", ["line_id"])

log = logging.getLogger(__name__)


def readiness(settings: Settings) -> Callable[[], bool]:
    """A readiness probe: true when the SQL store answers ``SELECT 1`` and Redis answers PING.

    One engine and one Redis client serve every probe; a failure is logged with its reason.
    """
    from sqlalchemy import text

    from linewatch.contracts.database import make_engine
    from linewatch.contracts.live_state import connect_settings

    engine = make_engine(settings.database_url, pool_size=1)
    client = connect_settings(settings.redis)

    def ready() -> bool:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            client.ping()
        except Exception as exc:  # noqa: BLE001 (any failure means not ready)
            log.warning("dashboard not ready: %s", exc)
            return False
        return True

    return ready


def serve(settings: Settings) -> None:
    """Serve ``/metrics``, ``/healthz`` and ``/readyz`` on ``dashboard.metrics_port`` when it is set."""
    if not settings.dashboard.metrics_port:
        return
    from linewatch.observability import serve_metrics

    serve_metrics(settings.dashboard.metrics_port, ready=readiness(settings))
