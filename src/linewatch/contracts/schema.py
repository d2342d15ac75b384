"""The SQL record's schema (SQLAlchemy 2): one schema for SQLite (embedded) and PostgreSQL (production).

Tables: ``cameras``, ``inspections`` (one row per inspected frame, unique on (camera_id, frame_id)),
``labels`` (operator reviews, one standing label per (inspection, operator)), ``review_claims`` (which operator
has a frame open on the Review page, until when), ``models`` (model versions), ``training_jobs`` and
``camera_products`` (changeovers: which product a camera shows from when on). ``inspections``, ``models`` and
``training_jobs`` rows each belong to a product (``docs/products.md``); labels and claims take theirs from their
inspection. The schema
is created and upgraded by Alembic migrations (``linewatch.contracts.migrations``; :func:`.database.migrate`).
An inspection result becomes its row through :func:`inspection_row`, beside the table it fills.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    cast,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .limits import ID_MAX_CHARS, PRODUCT_MAX_CHARS
from .products import DEFAULT_PRODUCT

if TYPE_CHECKING:
    from .messages import InspectionResult

# SQLite only auto-increments INTEGER PRIMARY KEY columns.
BigId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend: SQLite stores them naive, so UTC is re-attached on the
    way out; naive datetimes are refused on the way in (they would be read back as UTC, silently)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store UTC-aware datetimes")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


def unix_seconds(column: Any, dialect: str) -> Any:
    """SQL for a :class:`UTCDateTime` column as whole Unix seconds (a BIGINT: ``// n`` on it is integer division on
    every backend, where SQLAlchemy's ``/`` would divide by ``n + 0.0`` on SQLite). ``dialect``: the engine's
    ``dialect.name``; SQLite stores the column as naive UTC text, which ``strftime('%s')`` reads as UTC."""
    if dialect == "sqlite":
        return cast(func.strftime("%s", column), BigInteger)
    return cast(func.floor(func.extract("epoch", column)), BigInteger)


class Base(DeclarativeBase):
    pass


def product_column() -> Mapped[str]:
    """The ``product`` column of a table whose rows each belong to one product (migration 0007): rows from before
    products existed, and writers that name none, get :data:`~.products.DEFAULT_PRODUCT` from the database."""
    return mapped_column(String(PRODUCT_MAX_CHARS), nullable=False, server_default=text(f"'{DEFAULT_PRODUCT}'"))


class Camera(Base):
    __tablename__ = "cameras"

    camera_id: Mapped[str] = mapped_column(String(ID_MAX_CHARS), primary_key=True)
    line_id: Mapped[str] = mapped_column(String(ID_MAX_CHARS), index=True)
    first_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class Inspection(Base):
    """One inspected frame. Written once per (camera_id, frame_id): redeliveries are ignored."""

    __tablename__ = "inspections"
    __table_args__ = (
        UniqueConstraint("camera_id", "frame_id", name="uq_inspections_camera_frame"),
        Index("ix_inspections_line_time", "line_id", "captured_at"),
        Index("ix_inspections_camera_time", "camera_id", "captured_at"),
        Index("ix_inspections_verdict_time", "verdict", "captured_at"),
        Index("ix_inspections_processed_at", "processed_at"),  # live counts are rebuilt by processing time
        Index("ix_inspections_product_time", "product", "captured_at"),  # the per-product pages (migration 0007)
        # image retention walks the kept frames oldest first (migration 0003)
        Index("ix_inspections_kept_processed_at", "processed_at", "id",
              postgresql_where=text("image_uri IS NOT NULL"), sqlite_where=text("image_uri IS NOT NULL")),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(ID_MAX_CHARS))
    line_id: Mapped[str] = mapped_column(String(ID_MAX_CHARS))
    frame_id: Mapped[int] = mapped_column(BigInteger)
    part_id: Mapped[str | None] = mapped_column(String(ID_MAX_CHARS))
    captured_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    processed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    model_version: Mapped[str] = mapped_column(String(64), index=True)
    image_score: Mapped[float] = mapped_column(Float)
    normalized_score: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(8))
    threshold: Mapped[float] = mapped_column(Float)
    regions: Mapped[list] = mapped_column(JSON, default=list)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    queue_wait_ms: Mapped[float] = mapped_column(Float)
    decode_ms: Mapped[float] = mapped_column(Float)
    inference_ms: Mapped[float] = mapped_column(Float)
    total_ms: Mapped[float] = mapped_column(Float)
    worker_id: Mapped[str] = mapped_column(String(128))
    image_uri: Mapped[str | None] = mapped_column(Text)
    heatmap_uri: Mapped[str | None] = mapped_column(Text)
    kafka_topic: Mapped[str | None] = mapped_column(String(255))
    kafka_partition: Mapped[int | None] = mapped_column(Integer)
    kafka_offset: Mapped[int | None] = mapped_column(BigInteger)
    # the result's DriftFlag as a dict (migration 0004); none before it or without a drift check
    drift: Mapped[dict | None] = mapped_column(JSON)
    product: Mapped[str] = product_column()  # the product whose model scored the frame


STANDING = text("revoked_at IS NULL")  # the predicate of the partial unique index of labels


class Label(Base):
    """An operator's review of an inspected frame. Undo sets ``revoked_at``; the newest unrevoked label counts.

    At most one unrevoked label per (inspection, operator) (partial unique index, migration 0005): a second click
    is a no-op, written only through :func:`linewatch.contracts.labels.record_labels`.
    """

    __tablename__ = "labels"
    __table_args__ = (
        Index("ix_labels_inspection", "inspection_id", "created_at"),
        Index("uq_labels_standing", "inspection_id", "operator", unique=True,
              postgresql_where=STANDING, sqlite_where=STANDING),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    inspection_id: Mapped[int] = mapped_column(BigId, ForeignKey("inspections.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(8))  # good | defect
    operator: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    note: Mapped[str | None] = mapped_column(Text)


class ReviewClaim(Base):
    """A frame of the review queue opened by one operator: nobody else is offered it until ``expires_at``.
    Written by the dashboard (``dashboard/review_queue.py``); a claim past ``expires_at`` is free to take."""

    __tablename__ = "review_claims"

    inspection_id: Mapped[int] = mapped_column(BigId, ForeignKey("inspections.id", ondelete="CASCADE"),
                                               primary_key=True, autoincrement=False)
    operator: Mapped[str] = mapped_column(String(128))
    claimed_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())


class ModelVersion(Base):
    """A trained model of one product in the registry. ``status``: candidate, active, retired, rejected (one active
    at a time per product, a unique index over the active rows: migration 0008). ``version`` is its name
    (:func:`~.products.version_name`: ``bottle/v3``, ``v3`` for the default product), ``number`` its N, unique per
    product (migration 0007)."""

    __tablename__ = "models"
    __table_args__ = (
        UniqueConstraint("product", "number", name="uq_models_product_number"),
        Index("uq_models_one_active_per_product", "product", unique=True,
              sqlite_where=text("status = 'active'"), postgresql_where=text("status = 'active'")),
    )

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    product: Mapped[str] = product_column()
    number: Mapped[int] = mapped_column(Integer)
    parent_version: Mapped[str | None] = mapped_column(String(64))
    backbone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    artifact_uri: Mapped[str] = mapped_column(Text)
    weights_sha256: Mapped[str | None] = mapped_column(String(64))  # of the student weights in its folder
    manifest: Mapped[list] = mapped_column(JSON, default=list)
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    thresholds: Mapped[dict] = mapped_column(JSON, default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True)
    activated_by: Mapped[str | None] = mapped_column(String(128))
    activated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    notes: Mapped[str | None] = mapped_column(Text)


class TrainingJob(Base):
    """One retraining run of the trainer service. ``status``: queued, running, succeeded, failed."""

    __tablename__ = "training_jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    product: Mapped[str] = product_column()  # the product the job retrains (migration 0007)
    status: Mapped[str] = mapped_column(String(16), index=True)
    trigger: Mapped[str] = mapped_column(String(32))  # manual | threshold | schedule
    requested_by: Mapped[str | None] = mapped_column(String(128))
    from_scratch: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    stage: Mapped[str | None] = mapped_column(String(32))
    epoch: Mapped[int | None] = mapped_column(Integer)
    epochs: Mapped[int | None] = mapped_column(Integer)
    loss: Mapped[float | None] = mapped_column(Float)
    eta_s: Mapped[float | None] = mapped_column(Float)
    candidate_version: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    worker_pid: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())  # progress heartbeat
    # What the job trains on (trainer.dataset.TrainingSet.summary): confirmed goods found, used, held out, and each
    # one dropped with its reason; None until the job has collected its set (and for jobs from before 0006).
    training_set: Mapped[dict | None] = mapped_column(JSON)


class CameraProduct(Base):
    """A changeover: from ``since`` (UTC) on, ``camera_id`` shows ``product``, as set by ``set_by`` (migration
    0007). The product of a camera at time t is its row with the latest ``since <= t``; rows are never updated, so
    the table is the changeover history. No foreign key to ``cameras``: a camera may be mapped before its first
    frame."""

    __tablename__ = "camera_products"

    camera_id: Mapped[str] = mapped_column(String(ID_MAX_CHARS), primary_key=True)
    since: Mapped[dt.datetime] = mapped_column(UTCDateTime(), primary_key=True)
    product: Mapped[str] = mapped_column(String(PRODUCT_MAX_CHARS))
    set_by: Mapped[str] = mapped_column(String(128))


def inspection_row(r: InspectionResult) -> dict[str, Any]:
    """The ``inspections`` row of a result: every column but ``id``, regions as plain dicts."""
    f = r.frame
    return {
        "camera_id": f.camera_id, "line_id": f.line_id, "frame_id": f.frame_id, "part_id": f.part_id,
        "captured_at": f.captured_at, "processed_at": r.processed_at, "model_version": r.model_version,
        "image_score": r.image_score, "normalized_score": r.normalized_score, "verdict": r.verdict,
        "threshold": r.threshold, "regions": [g.model_dump() for g in r.regions], "width": r.width,
        "height": r.height, "queue_wait_ms": r.latency.queue_wait_ms, "decode_ms": r.latency.decode_ms,
        "inference_ms": r.latency.inference_ms, "total_ms": r.latency.total_ms, "worker_id": r.worker_id,
        "image_uri": r.image_uri, "heatmap_uri": r.heatmap_uri, "kafka_topic": f.topic,
        "kafka_partition": f.partition, "kafka_offset": f.offset,
        "drift": r.drift.model_dump() if r.drift is not None else None, "product": r.product,
    }
