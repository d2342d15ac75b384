"""The models a worker holds, one per product: loaded on an announcement or on first use, hot-swapped per product,
the least recently used evicted beyond a memory budget (docs/products.md, "Workers").

Each product has its own :class:`.model_slot.ModelSlot` (the model scoring now and the one offered to replace it
between two batches), so a rollout of one product's model swaps that slot only and the other products' frames
keep flowing. The registry's wish per product (its announced active version) is kept beside the slots: a product
announced but not loaded (over the budget, or evicted) is loaded on its next frame; a product never announced has
no model, and its frames are dead-lettered (``no_model``) by the caller, never scored by another product's model.

Thread use: the rollout watcher's thread calls :meth:`ModelShelf.announce`, the decode stage
:meth:`ModelShelf.slot_for`, the inference stage :meth:`ModelShelf.switch_all`, the heartbeat
:meth:`ModelShelf.status`; one lock guards the maps, and loads are serialised by a second one (a load takes
seconds, and two at once would only double the memory peak).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from linewatch.contracts.files import path_of
from linewatch.contracts.messages import ModelAnnouncement
from linewatch.contracts.products import DEFAULT_PRODUCT

from ..model_files import ModelFileError
from ..scoring import Scorer
from .model_slot import ModelSlot, load_error_line
from .rollout import RETRY_FIRST_S, RETRY_MAX_S

log = logging.getLogger(__name__)


def model_bytes(scorer: Scorer) -> int:
    """The bytes of a scorer's weights in memory (teacher, student, global branch: parameters and buffers)."""
    module = scorer.model.stpm
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


class LoadFailure(NamedTuple):
    """A product's failed load of one model version, and when to try it again."""

    retry_at: float  # time.monotonic() of the next try, s
    why: str  # load_error_line: the version and the error, one line
    delay_s: float  # the wait before this try; the next failure of the same version doubles it (up to 30 s)
    version: str


class ModelShelf:
    """Per-product model slots behind a least-recently-used memory budget.

    Args:
        load: a model directory -> its :class:`Scorer` (the worker's device, runtime and threads). Raises as
            :class:`Scorer` does.
        budget_bytes: loaded models beyond this many bytes (:func:`model_bytes`) evict the least recently used
            product's (never the one just loaded or asked for: one model is always kept, whatever its size; nor a
            ``--model`` directory's or one kept while its registry version does not load, which no frame would load
            again).
    """

    def __init__(self, load: Callable[[Path], Scorer], budget_bytes: int):
        self.load = load
        self.budget_bytes = budget_bytes
        self.wanted: dict[str, ModelAnnouncement] = {}  # the registry's active version per product
        self._slots: OrderedDict[str, ModelSlot] = OrderedDict()  # least recently used first
        # product -> its last failed load of a version (on an announcement, the watcher's retries, or a frame of
        # a product not held): a frame of a product not held tries that version again once the delay is over: 1 s,
        # doubling with each failure, by any of those paths, up to 30 s (the rollout watcher's delays), never on
        # every frame (a load blocks the decode stage); meanwhile its frames are dead-lettered no_model. Only
        # another version starts afresh.
        self._failed: dict[str, LoadFailure] = {}
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self.evictions = 0

    # ---- filling ------------------------------------------------------------------------------------------

    def install(self, product: str, scorer: Scorer) -> ModelSlot:
        """Hold ``scorer`` as ``product``'s model now (a worker's ``--model`` directory, or a first load)."""
        slot = ModelSlot(scorer)
        with self._lock:
            old = self._slots.pop(product, None)
            self._slots[product] = slot
            if product in self.wanted:
                slot.announced(self.wanted[product].version)
                if self.wanted[product].version == scorer.version:  # an earlier failure is over
                    self._failed.pop(product, None)
        if old is not None and old.current.version != scorer.version:  # the same version keeps its series
            old.retire()
        self._evict(keep=product)
        return slot

    def announce(self, a: ModelAnnouncement, preload: bool = True) -> None:
        """The registry's active version of ``a.product`` is ``a.version``. A product already loaded gets it
        loaded now and switched to between two batches; another one is loaded now when ``preload`` and it fits
        the budget, else on its first frame.

        Raises (the product's current model, if any, stays; the failure is recorded for the heartbeat):
            ModelFileError (incomplete files, checksum mismatch, another version's files), WeightsNotFoundError,
            ValueError.
        """
        with self._lock:
            self.wanted[a.product] = a
            slot = self._slots.get(a.product)
            if a.product in self._failed and self._failure_of(a.product, a.version) is None:
                del self._failed[a.product]  # another version: its first try owes nothing to the last one's
        if slot is not None:
            slot.announced(a.version)
            if slot.keep(a.version):  # held already; a model offered meanwhile (then rolled back) is dropped
                return
        elif not preload or not self._fits_another():
            log.info("model %s announced; loaded on the first frame of %s", a.version, a.product)
            return
        scorer = self._load_checked(a, slot)
        if slot is None:
            self.install(a.product, scorer)
        else:
            slot.offer(scorer)

    def _load_checked(self, a: ModelAnnouncement, slot: ModelSlot | None) -> Scorer:
        try:
            with self._load_lock:
                scorer = self.load(path_of(a.artifact_uri))
            if scorer.version != a.version:
                raise ModelFileError(f"{a.artifact_uri} holds model {scorer.version}, not {a.version}")
        except Exception as exc:
            if slot is not None:
                slot.load_failed(a.version, exc)
            with self._lock:
                wanted = self.wanted.get(a.product)
                if wanted is None or wanted.version == a.version:  # else the watcher announced a newer version
                    # during this load (a frame's, in slot_for): the newer one's failure, if any, and its delay stay
                    before = self._failure_of(a.product, a.version)
                    delay = RETRY_FIRST_S if before is None else min(2 * before.delay_s, RETRY_MAX_S)
                    self._failed[a.product] = LoadFailure(time.monotonic() + delay, load_error_line(a.version, exc),
                                                          delay, a.version)
            raise
        with self._lock:
            if self._failure_of(a.product, a.version) is not None:  # the failure is over
                del self._failed[a.product]
        return scorer

    def _failure_of(self, product: str, version: str) -> LoadFailure | None:
        """``product``'s recorded load failure if it is of ``version``, else None. A failure is recorded only for
        the version announced at that moment, so this is the check that a newer announcement since has not made it
        another version's. Call with ``_lock`` held."""
        failed = self._failed.get(product)
        return failed if failed is not None and failed.version == version else None

    # ---- using --------------------------------------------------------------------------------------------

    def slot_for(self, product: str) -> ModelSlot | str:
        """``product``'s slot, loading its announced model first if it is not held (blocking the caller for the
        load); or, when it has none, a sentence saying why (the frame is dead-lettered ``no_model``)."""
        while True:
            with self._lock:
                slot = self._slots.get(product)
                if slot is not None:
                    self._slots.move_to_end(product)
                    return slot
                a = self.wanted.get(product)
                failed = self._failure_of(product, a.version) if a is not None else None
            if a is None:
                return f"product {product!r} has no active model (activate one: linewatch model activate {product}/vN)"
            wait = failed.retry_at - time.monotonic() if failed is not None else 0.0
            if failed is not None and wait > 0:
                return f"product {product!r}: its model {failed.why} (tried again in {wait:.1f} s)"
            try:
                scorer = self._load_checked(a, None)
            except Exception as exc:  # noqa: BLE001 -- a model that does not load must not stop the line
                log.error("could not load %s for %s: %s", a.version, product, exc)
                with self._lock:
                    overtaken = self.wanted[product].version != a.version
                if not overtaken:
                    return f"product {product!r}: its model {load_error_line(a.version, exc)}"
                continue  # another version was announced during the load: this frame is that version's
            with self._lock:
                # Announced anew during the load (the watcher may leave that version to this first frame), or
                # installed meanwhile by the watcher: installing this one would keep an older version unnoticed.
                stale = self.wanted[product].version != a.version or product in self._slots
            if not stale:
                return self.install(product, scorer)

    def switch_all(self) -> None:
        """Switch every held product to its offered model, if any (the inference stage, between two batches)."""
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            slot.switch()

    def slot(self, product: str = DEFAULT_PRODUCT) -> ModelSlot | None:
        """``product``'s slot if held (no load, no recency change)."""
        with self._lock:
            return self._slots.get(product)

    @property
    def products(self) -> list[str]:
        """The products held, least recently used first."""
        with self._lock:
            return list(self._slots)

    def first(self) -> ModelSlot | None:
        """The default product's slot, else the most recently used one, else None."""
        with self._lock:
            if DEFAULT_PRODUCT in self._slots:
                return self._slots[DEFAULT_PRODUCT]
            return next(reversed(self._slots.values()), None)

    def status(self) -> dict[str, dict]:
        """Per product (held or announced): ``model_version`` (None when not held), ``device``, ``runtime`` and
        the slot's rollout fields (:meth:`.ModelSlot.rollout_status`; for a product not held, ``model_behind``
        says "not loaded" only after its load failed)."""
        with self._lock:
            slots, wanted = dict(self._slots), dict(self.wanted)
            failures = {p: self._failure_of(p, a.version) for p, a in wanted.items()}
        out: dict[str, dict] = {}
        for product, slot in slots.items():
            out[product] = slot.status()
        for product, a in wanted.items():
            if product not in out:
                error = failures[product].why if failures[product] is not None else None
                out[product] = {"model_version": None, "device": None, "runtime": None, "registry_version": a.version,
                                "model_behind": f"not loaded, registry says {a.version}" if error else None,
                                "model_load_error": error}
        return out

    # ---- the budget ---------------------------------------------------------------------------------------

    def _fits_another(self) -> bool:
        """Whether one more model of the size of the largest held fits the budget."""
        with self._lock:
            sizes = [model_bytes(s.current) for s in self._slots.values()]
        return not sizes or sum(sizes) + max(sizes) <= self.budget_bytes

    def _evict(self, keep: str) -> None:
        """Drop least recently used products until the held models fit the budget (``keep`` always stays, and so
        does a model its product's next frame would not load again: :meth:`_reloadable`). A batch in flight keeps
        its own reference, so eviction never interrupts scoring."""
        with self._lock:
            while len(self._slots) > 1 and sum(model_bytes(s.current) for s in self._slots.values()) \
                    > self.budget_bytes:
                product = next((p for p, s in self._slots.items() if p != keep and self._reloadable(p, s)), None)
                if product is None:
                    log.warning("models held exceed the memory budget (%.0f MB), none can be loaded again",
                                self.budget_bytes / 2**20)
                    return
                slot = self._slots.pop(product)
                self.evictions += 1
                log.info("model %s of %s evicted (memory budget %.0f MB); loaded again on its next frame",
                         slot.current.version, product, self.budget_bytes / 2**20)
                slot.retire()

    def _reloadable(self, product: str, slot: ModelSlot) -> bool:
        """Whether ``product``'s next frame would load ``slot``'s model (or the one offered to it) again: never a
        ``--model`` directory (not announced) or a model kept while the registry's version does not load (its
        frames would be dead-lettered). Call with ``_lock`` held."""
        a = self.wanted.get(product)
        return a is not None and a.version in (slot.current.version, slot.offered_version)
