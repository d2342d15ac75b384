"""Model hot swap: the scorer in use for one product, and the next one waiting to replace it between two batches
(:mod:`.model_shelf` holds one slot per product)."""

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

    It also records what the registry asks for: :attr:`registry_version`, the version last announced (None
    when the worker does not follow the registry), and :attr:`load_error`, why that version is not loaded
    yet (None once it is), so the heartbeat can say "on vN, registry says vM".
    """

    def __init__(self, scorer: Scorer):
        self.current = scorer
        self.registry_version: str | None = None
        self.load_error: str | None = None
        self._next: Scorer | None = None
        self._lock = threading.Lock()  # an offer arriving while switch() takes the previous one is kept
        telemetry.MODEL_INFO.labels(version=scorer.version).set(1)

    def announced(self, version: str) -> None:
        """The registry's active version is now ``version`` (what the worker should score with)."""
        self.registry_version = version

    def load_failed(self, version: str, error: BaseException) -> None:
        """Loading ``version`` failed with ``error``; the current model stays (one line kept for the heartbeat)."""
        self.load_error = load_error_line(version, error)

    def status(self) -> dict[str, str | None]:
        """What the heartbeat says of this slot: ``model_version``, ``device`` and ``runtime`` of the model scoring
        now, and the rollout fields (:meth:`rollout_status`)."""
        scorer = self.current
        return {"model_version": scorer.version, "device": str(scorer.device), "runtime": scorer.runtime,
                **self.rollout_status()}

    def rollout_status(self) -> dict[str, str | None]:
        """The heartbeat's rollout fields, each None when there is nothing to say: ``registry_version``,
        ``model_behind`` (``"on v1, registry says v2"`` while the worker scores with another version than the
        registry's active one and has not loaded it yet: a version loaded and waiting for the next batch, on an
        idle line, is not behind) and ``model_load_error`` (``"v2: <why it did not load>"``)."""
        on, wanted = self.current.version, self.registry_version
        loaded = self._next.version if self._next is not None else None  # switched to at the next batch
        behind = f"on {on}, registry says {wanted}" if wanted is not None and wanted not in (on, loaded) else None
        return {"registry_version": wanted, "model_behind": behind, "model_load_error": self.load_error}

    def offer(self, scorer: Scorer) -> None:
        """Make ``scorer`` the next model (replacing any offered before and not switched to yet)."""
        with self._lock:
            self._next = scorer
            self.load_error = None
        log.info("model %s loaded; switching after the current batch", scorer.version)

    @property
    def offered_version(self) -> str | None:
        """The version of the model offered and not switched to yet, or None."""
        scorer = self._next
        return scorer.version if scorer is not None else None

    def keep(self, version: str) -> bool:
        """If the model scoring now is ``version``, drop any model offered and not switched to yet (the registry went
        back to it before the next batch: a rollback right after an activation) and return True; else False."""
        with self._lock:
            if self.current.version != version:
                return False
            self._next = None
            self.load_error = None
            return True

    def switch(self) -> bool:
        """Switch to the offered model, if any; returns whether it did. Call only between batches."""
        with self._lock:  # taken and switched to under the lock: keep() sees one model or the other
            scorer, self._next = self._next, None
            if scorer is None:
                return False
            old, self.current = self.current, scorer
        if old.version != scorer.version:  # the same version loaded again keeps its series
            _forget(old.version)  # only this slot's series: other products' models keep theirs
        telemetry.MODEL_INFO.labels(version=scorer.version).set(1)
        log.info("now scoring with model %s", scorer.version)
        return True

    def retire(self) -> None:
        """The slot is no longer held (evicted, or replaced): its model stops being reported as in use."""
        _forget(self.current.version)


def load_error_line(version: str, error: BaseException) -> str:
    """``"v2: <the error's first line>"`` (its type's name when it has no message): a failed load in one line."""
    return f"{version}: {(str(error).splitlines() or [type(error).__name__])[0]}"


def _forget(version: str) -> None:
    try:
        telemetry.MODEL_INFO.remove(version)
    except KeyError:
        pass
