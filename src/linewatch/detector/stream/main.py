"""Entry point of ``linewatch detect``: one detector worker, following the model registry, serving metrics."""

from __future__ import annotations

import logging
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

    Raises:
        ValueError: no model at all (no ``model_dir`` and nothing announced).
        ModelFileError, WeightsNotFoundError: the model it would start on cannot be loaded.
    """
    watcher = announced = None
    if follow_registry:
        from linewatch.detector.stream.rollout import ActiveModelWatcher

        watcher = ActiveModelWatcher(settings.kafka, on_change=lambda a: worker.swap_model(path_of(a.artifact_uri),
                                                                                           a.version))
        announced = watcher.read_current()
        while announced is None and model_dir is None:  # a fresh deployment: wait for the first model
            log.warning("no model yet: waiting for a version to be activated (linewatch model register --activate)")
            announced = watcher.read_current(settle_s=5.0)
    if announced is None and model_dir is None:
        raise ValueError("no model: pass --model MODEL_DIR or activate a version in the registry")
    worker = _start_on(settings, announced, model_dir, threads)
    if watcher is not None:
        if announced is not None and worker.model_version != announced.version:
            watcher.retry(announced)  # started on --model: the announced version is tried again with backoff
        watcher.start()
    server = None
    if settings.detector.metrics_port:
        from linewatch.observability import serve_metrics

        server = serve_metrics(settings.detector.metrics_port, ready=lambda: not worker.stop_event.is_set())
    try:
        return worker.run()
    finally:
        if watcher is not None:
            watcher.stop()
        if server is not None:
            server.shutdown()



def _start_on(settings: Settings, announced, model_dir: Path | None, threads: int | None) -> DetectorWorker:
    """The worker, scoring with the announced version; with that one not loadable (yet) and a ``model_dir``
    given, with ``model_dir`` instead (the heartbeat then says "on <model_dir's version>, registry says ...").

    Raises: ModelFileError, WeightsNotFoundError: the model it would start on cannot be loaded.
    """
    from ..model_files import ModelFileError

    if announced is None:
        return DetectorWorker(settings, model_dir, threads=threads)
    log.info("registry: active model is %s", announced.version)
    try:
        worker = DetectorWorker(settings, path_of(announced.artifact_uri), threads=threads)
    except ModelFileError as exc:
        if model_dir is None:
            raise
        log.warning("could not load the registry's model %s (%s); starting on %s", announced.version, exc, model_dir)
        worker = DetectorWorker(settings, model_dir, threads=threads)
        worker.model.load_failed(announced.version, exc)
    worker.model.announced(announced.version)
    return worker
