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
    (falling back to ``model_dir`` when none was announced, or when the announced one does not load) and
    switches on every new announcement; one that does not load is tried again with backoff
    (:class:`~linewatch.detector.stream.rollout.ActiveModelWatcher`) while the worker scores on.
    SIGTERM and SIGINT are handled from the start (also while waiting for a first model or loading one):
    the worker stops in order and the code is 0. ``/healthz`` and ``/readyz`` (with
    ``detector.metrics_port``) answer 503 with the reason while the worker is stalled
    (:mod:`.progress`), and ``/readyz`` also while it stops.

    Raises:
        ValueError: no model at all (no ``model_dir`` and nothing announced).
        ModelFileError, WeightsNotFoundError: the model it would start on cannot be loaded.
    """
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    watcher = announced = None
    if follow_registry:
        from linewatch.detector.stream.rollout import ActiveModelWatcher

        watcher = ActiveModelWatcher(settings.kafka, on_change=lambda a: worker.swap_model(path_of(a.artifact_uri),
                                                                                           a.version))
        announced = watcher.read_current()
        while announced is None and model_dir is None:  # a fresh deployment: wait for the first model
            if stop.is_set():
                return 0
            log.warning("no model yet: waiting for a version to be activated (linewatch model register --activate)")
            announced = watcher.read_current(settle_s=5.0)
    if announced is None and model_dir is None:
        raise ValueError("no model: pass --model MODEL_DIR or activate a version in the registry")
    worker = _start_on(settings, announced, model_dir, threads, stop)
    if watcher is not None:
        if announced is not None and worker.model_version != announced.version:
            watcher.retry(announced)  # started on --model: the announced version is tried again with backoff
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


def _start_on(settings: Settings, announced, model_dir: Path | None, threads: int | None,
              stop: threading.Event) -> DetectorWorker:
    """The worker, scoring with the announced version; with that one not loadable (yet) and a ``model_dir``
    given, with ``model_dir`` instead (the heartbeat then says "on <model_dir's version>, registry says ...").

    Raises: ModelFileError, WeightsNotFoundError: the model it would start on cannot be loaded.
    """
    from ..model_files import ModelFileError

    if announced is None:
        return DetectorWorker(settings, model_dir, threads=threads, stop_event=stop)
    log.info("registry: active model is %s", announced.version)
    try:
        worker = DetectorWorker(settings, path_of(announced.artifact_uri), threads=threads, stop_event=stop)
    except ModelFileError as exc:
        if model_dir is None:
            raise
        log.warning("could not load the registry's model %s (%s); starting on %s", announced.version, exc, model_dir)
        worker = DetectorWorker(settings, model_dir, threads=threads, stop_event=stop)
        worker.model.load_failed(announced.version, exc)
    worker.model.announced(announced.version)
    return worker
