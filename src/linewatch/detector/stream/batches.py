"""The data a worker's pipeline passes along, one module that every stage imports and that imports none of them.

A frame message becomes a :class:`RawFrame`; decoding makes it a :class:`PreparedFrame` or a
:class:`DeadLetter`; batches of them go from stage to stage as :class:`RawBatch` (consumed),
:class:`PreparedBatch` (decoded) and :class:`ScoredBatch` (scored, then stored).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from linewatch.contracts.messages import FrameMeta, InspectionResult
from linewatch.contracts.products import DEFAULT_PRODUCT

from ..geometry import FrameInput

# Previews (for the overlays shown in review and on the dashboard) are at most this many pixels on their
# longer side. Here, beside PreparedFrame.preview, so the CPU decoder (frames.py) and the device decoder
# (device_decode.py) share it without importing each other.
PREVIEW_SIDE = 640


@dataclass
class RawFrame:
    """A frame message as consumed: where it came from, its bytes, when the worker received it, and when the
    broker appended it (``broker_ns``, only from a topic with ``message.timestamp.type=LogAppendTime``: the
    record timestamp of a ``CreateTime`` topic is the camera's clock again)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    received_ns: int = field(default_factory=time.time_ns)
    broker_ns: int | None = None

    @property
    def arrived_ns(self) -> int:
        """The frame's arrival, ns since the epoch: the broker's append time when known, else its receipt."""
        return self.broker_ns if self.broker_ns is not None else self.received_ns

    @property
    def source(self) -> str:
        return f"{self.topic}/{self.partition}@{self.offset}"


@dataclass
class PreparedFrame:
    """A decoded frame: its model inputs (:class:`..geometry.FrameInput`: windows uint8 (T, 3, S, S), a NumPy
    array or a tensor on the device when decoded there, and their plan), a preview uint8 (h, w, 3) RGB for
    overlays (at most :data:`PREVIEW_SIDE` on its longer side), the original width and height, timings, and the
    frame statistics of its model input (:func:`linewatch.detector.frame_stats.input_statistics`, for the drift
    check; None when not taken), its product and the slot of the model that scores it."""

    raw: RawFrame
    meta: FrameMeta
    model_input: FrameInput
    preview: np.ndarray
    width: int
    height: int
    decode_started_ns: int
    decode_ms: float
    stats: dict[str, float] | None = None
    product: str = DEFAULT_PRODUCT  # the frame's product (:mod:`.routing`)
    slot: Any = None  # the :class:`.model_slot.ModelSlot` of that product's model (Any: this module imports none)


@dataclass
class DeadLetter:
    """A frame that cannot be inspected and why (``reason`` is a short code, ``detail`` a sentence)."""

    raw: RawFrame
    reason: str
    detail: str


@dataclass
class RawBatch:
    """A micro-batch as consumed, handed to the decode stage.

    ``batch_id``: the id the :class:`.offsets.OffsetTracker` gave the batch (the tracker keeps its offsets).
    """

    batch_id: int
    frames: list[RawFrame]


@dataclass
class PreparedBatch:
    """A micro-batch after decoding: the frames the model can take, and the dead letters of the others."""

    batch_id: int
    frames: list[PreparedFrame]
    dead: list[DeadLetter]


@dataclass
class ScoredBatch:
    """A batch after the model: results aligned with their frames and anomaly maps, plus its dead letters.

    ``keep``: indices of frames to keep in the image store; ``done``: the storing steps already done
    (:class:`.result_store.ResultStore` skips them on a retry); ``overlays``: JPEG overlays by frame index.
    ``batch_id``: the offsets tracker's id of the batch (its offsets are committed once it is stored); None
    for a batch scored outside a worker. A consumed batch holding several products is scored as one model call per
    product (a model batch never mixes products), and the parts are joined again by :meth:`join`.
    """

    results: list[InspectionResult]
    frames: list[PreparedFrame]
    maps: list[np.ndarray]  # per frame float32 at model scale, the frame's aspect ratio (plan.scaled)
    pixel_thresholds: list[float]  # per frame: the pixel threshold of the model that scored it
    dead: list[DeadLetter]
    batch_id: int | None = None
    keep: set[int] = field(default_factory=set)
    done: set[str] = field(default_factory=set)
    overlays: dict[int, bytes] = field(default_factory=dict)
    inserted: set[tuple] = field(default_factory=set)  # (camera_id, frame_id) of the SQL rows this batch created
    new: set[int] = field(default_factory=set)  # indices of those rows' results (one per key; not redelivered)
    drift: dict[str, dict] = field(default_factory=dict)  # camera_id -> its drift state after this batch

    @classmethod
    def join(cls, parts: list[ScoredBatch], dead: list[DeadLetter], batch_id: int | None,
             order: dict[int, int] | None = None) -> ScoredBatch:
        """One batch of ``parts`` (each scored by one model, none stored yet) with ``dead``; its frames in the order
        ``order`` gives (``id(frame.raw)`` -> position in the consumed batch; None: part after part). The consumed
        order matters downstream: a camera's newest frame of the batch is the last of its frames (its overlay,
        Redis's latest result)."""
        out = cls([], [], [], [], dead, batch_id)
        for part in parts:
            base = len(out.results)
            out.results += part.results
            out.frames += part.frames
            out.maps += part.maps
            out.pixel_thresholds += part.pixel_thresholds
            out.keep |= {base + i for i in part.keep}
            out.drift.update(part.drift)  # states taken after each part: the last part's is the camera's latest
        if order is not None:
            perm = sorted(range(len(out.frames)), key=lambda i: order[id(out.frames[i].raw)])
            position = {old: new for new, old in enumerate(perm)}
            out.results = [out.results[i] for i in perm]
            out.frames = [out.frames[i] for i in perm]
            out.maps = [out.maps[i] for i in perm]
            out.pixel_thresholds = [out.pixel_thresholds[i] for i in perm]
            out.keep = {position[i] for i in out.keep}
        return out

    def take_out(self, details: dict[int, str], reason: str) -> None:
        """Move the frames at the indices of ``details`` from the results to the dead letters (with ``reason``
        and each one's detail), keeping every per-frame field aligned."""
        if not details:
            return
        self.dead = self.dead + [DeadLetter(self.frames[i].raw, reason, detail) for i, detail in details.items()]
        kept = [i for i in range(len(self.results)) if i not in details]
        position = {old: new for new, old in enumerate(kept)}
        self.results = [self.results[i] for i in kept]
        self.frames = [self.frames[i] for i in kept]
        self.maps = [self.maps[i] for i in kept]
        self.pixel_thresholds = [self.pixel_thresholds[i] for i in kept]
        self.keep = {position[i] for i in self.keep if i in position}
        self.new = {position[i] for i in self.new if i in position}
        self.overlays = {position[i]: v for i, v in self.overlays.items() if i in position}
