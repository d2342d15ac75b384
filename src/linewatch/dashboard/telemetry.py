"""Prometheus metrics of the dashboard, served with ``/healthz`` and ``/readyz`` beside Streamlit.

Streamlit runs every browser session's script in threads of one process, so these counters are
process-wide. :func:`serve` starts the endpoint from the launcher, before the first visit, so a
probe sees the dashboard whether or not anybody has opened it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from prometheus_client import Counter, Histogram

from linewatch.contracts.settings import Settings

PAGE_VIEWS = Counter("linewatch_dashboard_page_views_total", "Full page runs, per page", ["page"])
LABELS = Counter("linewatch_dashboard_labels_total", "Operator labels written", ["label"])
RETRAIN_REQUESTS = Counter("linewatch_dashboard_retrain_requests_total", "Retraining jobs requested")
STORE_ERRORS = Counter("linewatch_dashboard_store_errors_total",
                       "Page runs cut short by a Redis or SQL failure", ["store"])
QUERY_SECONDS = Histogram("linewatch_dashboard_query_seconds", "SQL statement time, seconds",
                          buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))

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
