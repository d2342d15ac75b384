"""Which model inspects a frame: its product's (docs/products.md, "Routing a frame").

A frame's product is its ``product`` header, else its camera's changeover in force at its capture time, else the
settings' ``[products] cameras``, else ``default`` (:class:`linewatch.contracts.changeovers.CameraProducts`, the
one home of that rule). The frame is then scored by that product's model (:class:`.model_shelf.ModelShelf`), or,
when the product has none, dead-lettered with reason ``no_model``: never scored by another product's model.

The changeover history is reread from SQL every ``products.changeover_refresh_s`` by a thread of its own, so the
decode stage never waits for the database; a changeover recorded at least that long before its time splits the
rows exactly at it. While SQL does not answer, the last history read stays in force.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from linewatch.contracts.changeovers import CameraProducts, changeovers
from linewatch.contracts.messages import FrameMeta, MessageError
from linewatch.contracts.product_settings import ProductSettings

from .batches import DeadLetter, RawFrame
from .model_shelf import ModelShelf
from .model_slot import ModelSlot

log = logging.getLogger(__name__)

NO_MODEL = "no_model"  # the dead-letter reason of a frame whose product has no model to score it


@dataclass
class Routed:
    """A frame, its product, and the slot of the model that will score it."""

    raw: RawFrame
    product: str
    slot: ModelSlot


class ProductRouter:
    """Routes frames to their product's model.

    Args:
        engine: the SQL record (the changeover history); None: the settings' mapping only.
        settings: the ``[products]`` settings.
    """

    def __init__(self, engine: Engine | None, settings: ProductSettings):
        self.engine = engine
        self.settings = settings
        self.cameras = CameraProducts(fallback=settings.cameras)
        self.read_at: float | None = None  # time.monotonic() of the last successful read of the history
        self._warned = False

    def refresh(self) -> bool:
        """Reread the changeover history; returns whether it could (else the last one read stays)."""
        if self.engine is None:
            return True
        try:
            history = changeovers(self.engine)
        except Exception as exc:  # noqa: BLE001 -- the database may be away; routing goes on with what it read
            if not self._warned:
                log.warning("could not read the changeover history (%s); routing with the last one read", exc)
            self._warned = True
            return False
        self.cameras = CameraProducts(history, self.settings.cameras)  # replaced whole: readers see one or the other
        self._warned = False
        return True

    def keep_fresh(self, stop: threading.Event) -> None:
        """Reread the history every ``changeover_refresh_s`` until ``stop`` is set (a thread's loop)."""
        while not stop.wait(self.settings.changeover_refresh_s):
            self.refresh()

    def route(self, raws: list[RawFrame], models: ModelShelf) -> list[Routed | DeadLetter]:
        """Each frame's product and model slot, in order; a frame with bad headers is dead-lettered with their
        reason, one whose product has no model with ``no_model`` (loading a product's model on its first frame).
        Each product's slot is looked up once per batch: with a budget below the products a batch interleaves, a
        model is then loaded at most once per batch, not at every switch between products (the slots evicted
        meanwhile stay referenced by their frames until scored)."""
        cameras = self.cameras
        out: list[Routed | DeadLetter] = []
        slots: dict[str, ModelSlot | str] = {}
        for raw in raws:
            try:
                meta = FrameMeta.from_headers(raw.headers)
            except MessageError as exc:
                out.append(DeadLetter(raw, exc.reason, exc.detail))
                continue
            product = cameras.product_at(meta.camera_id, meta.captured_at, meta.product)
            if product not in slots:
                slots[product] = models.slot_for(product)
            slot = slots[product]
            out.append(Routed(raw, product, slot) if isinstance(slot, ModelSlot)
                       else DeadLetter(raw, NO_MODEL, slot))
        return out
