"""Entry point of ``linewatch detect``: one detector worker, following the model registry, serving metrics."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from linewatch.contracts.files import path_of
from linewatch.contracts.settings import Settings

from .worker import DetectorWorker

log = logging.getLogger(__name__)


def run_worker(settings: Settings, model_dir: Path | None, threads: int | None = None,
               follow_registry: bool = True) -> int:
    """Entry point of ``linewatch detect``: run one worker until SIGTERM/SIGINT; returns the exit code.

    With ``follow_registry`` the worker scores with the version last announced on the models topic
    (falling back to ``model_dir`` when none was announced) and switches on every new announcement.
    SIGTERM and SIGINT are handled from the start (also while waiting for a first model or loading one):
    the worker stops in order and the code is 0. ``/healthz`` and ``/readyz`` (with
    ``detector.metrics_port``) answer 503 with the reason while the worker is stalled
    (:mod:`.progress`), and ``/readyz`` also while it stops.

    Raises:
        ValueError: no model at all (no ``model_dir`` and nothing announced).
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    watcher = None
    if follow_registry:
        from linewatch.detector.stream.rollout import ActiveModelWatcher

        watcher = ActiveModelWatcher(settings.kafka, on_change=lambda a: worker.swap_model(path_of(a.artifact_uri)))
        announced = watcher.read_current()
        while announced is None and model_dir is None:  # a fresh deployment: wait for the first model
            if stop.is_set():
                return 0
            log.warning("no model yet: waiting for a version to be activated (linewatch model register --activate)")
            announced = watcher.read_current(settle_s=5.0)
        if announced is not None:
            log.info("registry: active model is %s", announced.version)
            model_dir = path_of(announced.artifact_uri)
    if model_dir is None:
        raise ValueError("no model: pass --model MODEL_DIR or activate a version in the registry")
    worker = DetectorWorker(settings, model_dir, threads=threads, stop_event=stop)
    if watcher is not None:
        watcher.start()
    server = None
    if settings.detector.metrics_port:
        from linewatch.observability import serve_metrics

        server = serve_metrics(settings.detector.metrics_port, ready=lambda: worker.ready, problem=worker.stalled)
    try:
        code = worker.run(install_signal_handlers=False)
    finally:
        if watcher is not None:
            watcher.stop()
        if server is not None:
            server.shutdown()
    if not worker.threads_ended:
        # A stage thread still inside the model: a normal interpreter exit would abort in the C++ runtime
        # ("terminate called without an active exception"). Everything else is closed; leave at once.
        logging.shutdown()
        os._exit(code)
    return code
