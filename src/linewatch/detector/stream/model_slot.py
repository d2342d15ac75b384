"""Model hot swap: the scorer in use, and the next one waiting to replace it between two batches."""

from __future__ import annotations

import logging
import threading

from ..scoring import Scorer
from . import telemetry

log = logging.getLogger(__name__)


class ModelSlot:
    """The :class:`Scorer` a worker scores with, and the one offered to replace it.

    :meth:`offer` may be called from any thread (the rollout watcher's); :meth:`switch` only from the
    inference thread, between two batches, so that no batch is scored by two models. :attr:`current` may
    be read from any thread (one attribute read).
    """

    def __init__(self, scorer: Scorer):
        self.current = scorer
        self._next: Scorer | None = None
        self._lock = threading.Lock()  # an offer arriving while switch() takes the previous one is kept
        telemetry.MODEL_INFO.labels(version=scorer.version).set(1)

    def offer(self, scorer: Scorer) -> None:
        """Make ``scorer`` the next model (replacing any offered before and not switched to yet)."""
        with self._lock:
            self._next = scorer
        log.info("model %s loaded; switching after the current batch", scorer.version)

    def switch(self) -> bool:
        """Switch to the offered model, if any; returns whether it did. Call only between batches."""
        with self._lock:
            scorer, self._next = self._next, None
        if scorer is None:
            return False
        self.current = scorer
        telemetry.MODEL_INFO.clear()
        telemetry.MODEL_INFO.labels(version=scorer.version).set(1)
        log.info("now scoring with model %s", scorer.version)
        return True
