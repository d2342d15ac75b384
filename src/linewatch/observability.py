"""Logging and metrics conventions shared by every service.

Logs: one line per event, JSON (``log_format = "json"``, for log shippers) or plain text; extra
fields given as ``logger.info("...", extra={"camera_id": ...})`` are kept as JSON keys.
Metrics: Prometheus, served with ``/healthz`` and ``/readyz`` by :func:`serve_metrics`.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(fmt: str = "text", level: str = "INFO") -> None:
    """Route the root logger to stderr in ``fmt`` ('json' or 'text') at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("kafka", "urllib3", "PIL", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def serve_metrics(port: int, ready: Callable[[], bool] = lambda: True, host: str = "0.0.0.0",
                  problem: Callable[[], str | None] = lambda: None) -> ThreadingHTTPServer:
    """Serve ``/metrics`` (Prometheus text format), ``/healthz`` and ``/readyz`` on ``host:port`` from a daemon
    thread; returns the server (``.shutdown()`` stops it).

    ``/healthz``: 200 ``ok`` while ``problem()`` is None, else 503 with its text (alive but making no
    progress, e.g. ``stalled 45 s: oldest batch in flight``: an orchestrator's liveness probe replaces it).
    ``/readyz``: 200 ``ready`` when ``ready()`` is true and there is no problem, else 503 with the reason.
    """
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.startswith("/metrics"):
                body, status, ctype = generate_latest(), 200, CONTENT_TYPE_LATEST
            elif self.path.startswith("/healthz"):
                trouble = problem()
                body, status, ctype = (f"{trouble}\n".encode() if trouble else b"ok\n"), (503 if trouble else 200), \
                    "text/plain"
            elif self.path.startswith("/readyz"):
                trouble = problem() or (None if ready() else "not ready")
                body, status, ctype = (f"{trouble}\n".encode() if trouble else b"ready\n"), \
                    (503 if trouble else 200), "text/plain"
            else:
                body, status, ctype = b"not found\n", 404, "text/plain"
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:  # scrapes are not log events
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
