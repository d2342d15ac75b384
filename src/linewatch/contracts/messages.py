"""Message schemas on Kafka: camera frames in, inspection results out. Versioned; every service uses these.

Frame message (topic ``<prefix>.frames``):
    key      camera id (UTF-8), so one camera's frames stay in order on one partition
    value    the encoded image exactly as captured (JPEG or PNG bytes)
    headers  schema, camera_id, line_id, frame_id (decimal, strictly increasing per camera),
             captured_at (UTC, integer nanoseconds since the epoch), content_type, part_id (optional)

Dead-letter message (topic ``<prefix>.frames.dlq``): the frame's key, value and headers unchanged,
plus ``dlq.reason`` (a short code), ``dlq.detail``, ``dlq.source`` (topic/partition/offset),
``dlq.worker`` and ``dlq.at``.

Inspection result (topic ``<prefix>.inspections``, key = camera id, value = JSON of
:class:`InspectionResult`). Delivery is at-least-once: consumers de-duplicate on (camera_id, frame_id).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from .limits import CAPTURED_AT_MAX_NS, CAPTURED_AT_MIN_NS, CONTENT_TYPE_MAX_CHARS, FRAME_ID_MAX, ID_MAX_CHARS
from .products import DEFAULT_PRODUCT, check_product

FRAME_SCHEMA = "linewatch.frame/1"
INSPECTION_SCHEMA = "linewatch.inspection/1"

_DECIMAL = re.compile(r"-?[0-9]{1,30}")  # int() would also take "1_000", " 7", "+7" and non-ASCII digits
_REQUIRED_HEADERS = ("camera_id", "line_id", "frame_id", "captured_at", "content_type")

Headers = list[tuple[str, bytes]]


class MessageError(ValueError):
    """A Kafka message that does not follow the frame schema; ``reason`` is a short code."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FrameMeta:
    """What a camera says about a frame (the frame message's headers)."""

    camera_id: str
    line_id: str
    frame_id: int
    captured_at_ns: int
    content_type: str
    part_id: str | None = None
    product: str | None = None  # the ``product`` header: the part type, when the camera names it (docs/products.md)

    @property
    def captured_at(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.captured_at_ns / 1e9, tz=dt.UTC)

    def headers(self) -> Headers:
        """Kafka headers of this frame."""
        out = [
            ("schema", FRAME_SCHEMA.encode()),
            ("camera_id", self.camera_id.encode()),
            ("line_id", self.line_id.encode()),
            ("frame_id", str(self.frame_id).encode()),
            ("captured_at", str(self.captured_at_ns).encode()),
            ("content_type", self.content_type.encode()),
        ]
        if self.part_id:
            out.append(("part_id", self.part_id.encode()))
        if self.product:
            out.append(("product", self.product.encode()))
        return out

    @classmethod
    def from_headers(cls, headers: Headers | None) -> FrameMeta:
        """Parse and check frame headers against the limits every store holds (:data:`ID_MAX_CHARS`,
        :data:`FRAME_ID_MAX`, :data:`CAPTURED_AT_MIN_NS` .. :data:`CAPTURED_AT_MAX_NS`, :data:`FRAME_SCHEMA`).

        A frame that passes can be written to SQL, Redis and the image store; one that fails could never be,
        so it is dead-lettered instead of being retried.

        Raises:
            MessageError: ``bad_headers``, with a detail naming the header and the rule it breaks.
        """
        values: dict[str, str] = {}
        for key, value in headers or []:
            try:
                values[key] = value.decode() if value is not None else ""
            except (UnicodeDecodeError, AttributeError):
                raise MessageError("bad_headers", f"header {key!r} is not UTF-8 text") from None
        missing = [k for k in ("schema", *_REQUIRED_HEADERS) if not values.get(k)]
        if missing:
            raise MessageError("bad_headers", f"missing frame headers: {', '.join(missing)}")
        if values["schema"] != FRAME_SCHEMA:
            raise MessageError("bad_headers", f"frame schema {_shown(values['schema'])} is not {FRAME_SCHEMA!r}, "
                                              "the one this release reads")
        for name in ("camera_id", "line_id", "part_id"):
            if values.get(name):  # part_id is optional: absent or empty means none
                check_id(name, values[name])
        if values.get("product"):  # optional: absent or empty means "the camera's product" (the changeovers)
            try:
                check_product(values["product"])
            except ValueError as exc:
                raise MessageError("bad_headers", f"header 'product': {exc}") from None
        check_text("content_type", values["content_type"], CONTENT_TYPE_MAX_CHARS)
        if not (_DECIMAL.fullmatch(values["frame_id"]) and _DECIMAL.fullmatch(values["captured_at"])):
            raise MessageError("bad_headers", "frame_id and captured_at must be decimal integers (ASCII digits)")
        frame_id, captured = int(values["frame_id"]), int(values["captured_at"])
        if not 0 <= frame_id <= FRAME_ID_MAX:
            raise MessageError("bad_headers", f"frame_id {frame_id} is outside 0 .. 2^63-1")
        if not CAPTURED_AT_MIN_NS <= captured < CAPTURED_AT_MAX_NS:
            raise MessageError("bad_headers", f"captured_at {captured} ns is outside 2000-01-01 .. 2100-01-01 UTC "
                                              "(integer nanoseconds since the epoch expected)")
        return cls(values["camera_id"], values["line_id"], frame_id, captured, values["content_type"],
                   values.get("part_id") or None, values.get("product") or None)


def check_text(name: str, value: str, max_chars: int) -> str:
    """``value`` if it is 1 to ``max_chars`` printable characters (any script; no NUL, no control characters).

    Raises:
        MessageError: ``bad_headers`` naming ``name`` and the rule broken (the message is also a ValueError).
    """
    if not value:
        raise MessageError("bad_headers", f"{name} is empty")
    if len(value) > max_chars:
        raise MessageError("bad_headers", f"{name} has {len(value)} characters; at most {max_chars}")
    if not value.isprintable():
        raise MessageError("bad_headers", f"{name} {_shown(value)} holds a NUL or another control character")
    return value


def check_id(name: str, value: str) -> str:
    """A camera, line or part id as every store can hold it: 1 to :data:`ID_MAX_CHARS` printable characters.
    ``linewatch ingest`` checks its ids with this at start, the workers every frame's headers.

    Raises:
        MessageError: ``bad_headers`` (a ValueError) naming the id and the rule broken.
    """
    return check_text(name, value, ID_MAX_CHARS)


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


class FrameRef(BaseModel):
    """Which frame a result is about, and where it was read from."""

    camera_id: str
    line_id: str
    frame_id: int
    part_id: str | None = None
    captured_at: dt.datetime
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None


class DefectRegion(BaseModel):
    """A connected area of the anomaly map above the pixel threshold, in original-image pixels: bounding
    box (``x``, ``y``, ``width``, ``height``), ``area`` (pixels inside), and the map's ``peak`` value in it."""

    x: int
    y: int
    width: int
    height: int
    area: int
    peak: float


class Latency(BaseModel):
    """Where the time went, in ms: waiting in Kafka and the batch, decoding, the model, and in all (to the
    moment the result is written to the SQL store). Waiting starts at ``captured_at`` while the camera's clock
    agrees with the frame's arrival, else at the arrival (linewatch.contracts.clock); never negative.
    ``clock_skew_ms``: the camera's ``captured_at`` minus the frame's arrival (positive: its clock runs ahead)."""

    queue_wait_ms: float
    decode_ms: float
    inference_ms: float
    total_ms: float
    clock_skew_ms: float = 0.0


class DriftFlag(BaseModel):
    """Lighting / exposure drift of a frame against the training images' frame statistics
    (linewatch.detector.drift).

    ``out_of_range``: some statistic of this frame is beyond the drift threshold; ``reasons`` names each, furthest
    first (``"brightness z=-19.0"``). ``camera_drifting``: the camera's alarm was up when this frame was scored
    (enough of its recent frames out of range). ``worst`` and ``z``: the statistic furthest from training and its
    robust z-score.
    """

    out_of_range: bool
    camera_drifting: bool
    worst: str
    z: float
    reasons: list[str] = []


class InspectionResult(BaseModel):
    """The verdict on one frame: written to SQL, Redis and the inspections topic."""

    schema_version: Literal["linewatch.inspection/1"] = INSPECTION_SCHEMA
    frame: FrameRef
    width: int
    height: int
    model_version: str
    image_score: float
    normalized_score: float = Field(description="image score / threshold; above 1.0 is a defect")
    verdict: Literal["good", "defect"]
    threshold: float
    regions: list[DefectRegion] = []
    latency: Latency
    processed_at: dt.datetime
    worker_id: str
    product: str = Field(DEFAULT_PRODUCT, description="the product whose model scored the frame (docs/products.md)")
    image_uri: str | None = None
    heatmap_uri: str | None = None
    drift: DriftFlag | None = Field(None, description="none: the model has no reference statistics, or drift "
                                    "checks are off")

    @property
    def verdict_label(self) -> str:
        """The verdict as shown: ``defect (lighting drift)`` for a defect while its camera is in drift (still a
        defect, still rejected), else the verdict."""
        if self.verdict == "defect" and self.drift is not None and self.drift.camera_drifting:
            return "defect (lighting drift)"
        return self.verdict

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    def to_row(self) -> dict[str, Any]:
        """This result's ``inspections`` row (the mapping lives beside the table: :func:`.schema.inspection_row`)."""
        from .schema import inspection_row  # the message schema must not need SQLAlchemy to import

        return inspection_row(self)

    @classmethod
    def from_json(cls, data: bytes | str) -> InspectionResult:
        return cls.model_validate_json(data)


# Model rollout: each product's active version is announced on the compacted topic ``<prefix>.models``, one key per
# product (announcement_key: ACTIVE_MODEL_KEY for the default product, the key workers have always followed, and
# ``active/<product>`` for the others), value the JSON of a ModelAnnouncement (linewatch.trainer.rollout writes it,
# linewatch.detector.stream.rollout follows it). Compaction keeps the latest record of every key, so activating one
# product's version never replaces another product's announcement.
ACTIVE_MODEL_KEY = b"active"


def announcement_key(product: str = DEFAULT_PRODUCT) -> bytes:
    """The models-topic key of ``product``'s announcements: ``b"active"`` for the default product,
    ``b"active/<product>"`` otherwise. Raises: ProductError, an invalid product name."""
    check_product(product)
    return ACTIVE_MODEL_KEY if product == DEFAULT_PRODUCT else ACTIVE_MODEL_KEY + b"/" + product.encode()


class ModelAnnouncement(BaseModel):
    """The model version every worker should score ``product``'s frames with, and where its files are. Records from
    before products name none: they are the default product's."""

    version: str
    artifact_uri: str
    activated_at: dt.datetime
    activated_by: str | None = None
    product: str = DEFAULT_PRODUCT

    @field_validator("product")
    @classmethod
    def _product_name(cls, value: str) -> str:
        return check_product(value)  # a record naming no valid product is malformed, skipped like any other

    @property
    def key(self) -> bytes:
        """Its models-topic key (:func:`announcement_key`)."""
        return announcement_key(self.product)
