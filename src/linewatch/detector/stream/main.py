"""Entry point of ``linewatch detect``: one detector worker, following the model registry, serving metrics."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path

from linewatch.contracts.products import DEFAULT_PRODUCT
from linewatch.contracts.settings import Settings

from .worker import DetectorWorker

log = logging.getLogger(__name__)


def run_worker(settings: Settings, model_dir: Path | None, threads: int | None = None,
               follow_registry: bool = True) -> int:
    """Entry point of ``linewatch detect``: run one worker until SIGTERM/SIGINT; returns the exit code.

    With ``follow_registry`` the worker scores each product's frames with the version last announced for it on the
    models topic (the default product's falling back to ``model_dir`` when none was announced, or when the announced
    one does not load) and switches on every new announcement; one that does not load is tried again with backoff
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
    watcher, announced = None, {}
    if follow_registry:
        from linewatch.detector.stream.rollout import ActiveModelWatcher

        watcher = ActiveModelWatcher(settings.kafka, on_change=lambda a: worker.models.announce(a))
        announced = watcher.read_current()
        while not announced and model_dir is None:  # a fresh deployment: wait for the first model
            if stop.is_set():
                return 0
            log.warning("no model yet: waiting for a version to be activated (linewatch model register --activate)")
            announced = watcher.read_current(settle_s=5.0)
    if not announced and model_dir is None:
        raise ValueError("no model: pass --model MODEL_DIR or activate a version in the registry")
    worker = DetectorWorker(settings, model_dir, threads=threads, stop_event=stop)
    for a in _start_on(worker, announced, model_dir is not None):
        watcher.retry(a)  # not loadable at start: tried again with backoff while the worker scores on the others
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


def _start_on(worker: DetectorWorker, announced: dict, has_model_dir: bool) -> list:
    """Load the announced model of every product (the default product's first, then within the memory budget;
    the rest load on their first frame); returns the announcements that did not load, to be tried again. A
    ``--model`` directory stays the default product's model while the registry's does not load (the heartbeat then
    says "on <its version>, registry says ...").

    Raises: ModelFileError, WeightsNotFoundError: no model loaded at all, and no ``--model`` directory to start on.
    """
    failed, errors = [], []
    for product in sorted(announced, key=lambda p: p != DEFAULT_PRODUCT):
        a = announced[product]
        log.info("registry: active model of %s is %s", product, a.version)
        try:
            worker.models.announce(a)
        except Exception as exc:  # noqa: BLE001 -- reported, retried; the worker starts on the models that load
            log.warning("could not load the registry's model %s (%s)", a.version, exc)
            failed.append(a)
            errors.append(exc)
    if errors and not has_model_dir and not worker.models.products:
        raise errors[0]
    return failed
