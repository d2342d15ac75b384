"""The SQL record (SQLAlchemy 2): one schema for SQLite (embedded) and PostgreSQL (production).

Tables: ``cameras``, ``inspections`` (one row per inspected frame, unique on (camera_id, frame_id)),
``labels`` (operator reviews), ``models`` (model versions) and ``training_jobs``. The schema is created
and upgraded by Alembic migrations (``linewatch.contracts.migrations``); :func:`migrate` applies them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

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
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

MIGRATIONS_DIR = Path(__file__).with_name("migrations")

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


class Base(DeclarativeBase):
    pass


class Camera(Base):
    __tablename__ = "cameras"

    camera_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    line_id: Mapped[str] = mapped_column(String(128), index=True)
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
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    camera_id: Mapped[str] = mapped_column(String(128))
    line_id: Mapped[str] = mapped_column(String(128))
    frame_id: Mapped[int] = mapped_column(BigInteger)
    part_id: Mapped[str | None] = mapped_column(String(128))
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


class Label(Base):
    """An operator's review of an inspected frame. Undo sets ``revoked_at``; the newest unrevoked label counts."""

    __tablename__ = "labels"
    __table_args__ = (Index("ix_labels_inspection", "inspection_id", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    inspection_id: Mapped[int] = mapped_column(BigId, ForeignKey("inspections.id", ondelete="CASCADE"))
    label: Mapped[str] = mapped_column(String(8))  # good | defect
    operator: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    note: Mapped[str | None] = mapped_column(Text)


class ModelVersion(Base):
    """A trained model in the registry. ``status``: candidate, active, retired, rejected (one active at a time)."""

    __tablename__ = "models"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    number: Mapped[int] = mapped_column(Integer, unique=True)
    parent_version: Mapped[str | None] = mapped_column(String(64))
    backbone: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    artifact_uri: Mapped[str] = mapped_column(Text)
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


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode and a busy timeout so several processes can share it."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size)


def migrate(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the database schema to ``revision`` with the Alembic migrations.

    Idempotent and safe when several workers start at once: PostgreSQL serialises them with an
    advisory lock, SQLite with a lock file beside the database.
    """
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7419032)"))
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def insert_ignore_duplicates(conn: Connection, table: Any, rows: Iterable[Mapping[str, Any]],
                             keys: list[str]) -> int:
    """INSERT rows, silently skipping any whose ``keys`` already exist; returns rows actually inserted."""
    rows = list(rows)
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"{conn.dialect.name} is not supported: use PostgreSQL or SQLite")
    result = conn.execute(insert(table).on_conflict_do_nothing(index_elements=keys), rows)
    return max(0, result.rowcount or 0)


def upsert_cameras(conn: Connection, seen: Mapping[str, tuple[str, dt.datetime]]) -> None:
    """Record cameras (camera_id -> (line_id, last seen)), keeping first_seen and the latest last_seen."""
    if not seen:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    from sqlalchemy import func

    table = Camera.__table__
    stmt = insert(table).values(
        [{"camera_id": c, "line_id": line, "first_seen": t, "last_seen": t} for c, (line, t) in seen.items()]
    )
    greatest = func.greatest if conn.dialect.name == "postgresql" else func.max
    stmt = stmt.on_conflict_do_update(
        index_elements=["camera_id"],
        set_={"line_id": stmt.excluded.line_id, "last_seen": greatest(table.c.last_seen, stmt.excluded.last_seen)},
    )
    conn.execute(stmt)


def effective_labels() -> Any:
    """A subquery of each inspection's effective label: its newest label that was not undone.

    Columns: ``inspection_id``, ``label`` (good | defect), ``operator``, ``created_at``.
    """
    from sqlalchemy import func, select

    ranked = (
        select(Label.inspection_id, Label.label, Label.operator, Label.created_at,
               func.row_number().over(partition_by=Label.inspection_id,
                                      order_by=(Label.created_at.desc(), Label.id.desc())).label("rank"))
        .where(Label.revoked_at.is_(None))
        .subquery()
    )
    return select(ranked.c.inspection_id, ranked.c.label, ranked.c.operator, ranked.c.created_at).where(
        ranked.c.rank == 1).subquery()


def confirmed_good_frames(conn: Connection, since: dt.datetime | None = None) -> list[Any]:
    """Kept frames whose effective label is ``good`` (operator-confirmed), oldest first: the frames the
    trainer may learn from. A frame whose effective label is ``defect`` is never among them.

    Rows: ``Inspection`` columns ``id``, ``camera_id``, ``frame_id``, ``image_uri``, plus the label's
    ``operator`` and ``labelled_at``. ``since``: only labels made after this moment.
    """
    from sqlalchemy import select

    eff = effective_labels()
    query = (
        select(Inspection.id, Inspection.camera_id, Inspection.frame_id, Inspection.image_uri,
               eff.c.operator, eff.c.created_at.label("labelled_at"))
        .join(eff, eff.c.inspection_id == Inspection.id)
        .where(eff.c.label == "good", Inspection.image_uri.is_not(None))
        .order_by(eff.c.created_at, Inspection.id)
    )
    if since is not None:
        query = query.where(eff.c.created_at > since)
    return list(conn.execute(query).all())


def count_confirmed_good_frames(conn: Connection, since: dt.datetime | None = None) -> int:
    """How many frames :func:`confirmed_good_frames` would return (the frames ready for retraining)."""
    from sqlalchemy import func, select

    eff = effective_labels()
    query = (
        select(func.count())
        .select_from(Inspection)
        .join(eff, eff.c.inspection_id == Inspection.id)
        .where(eff.c.label == "good", Inspection.image_uri.is_not(None))
    )
    if since is not None:
        query = query.where(eff.c.created_at > since)
    return int(conn.execute(query).scalar_one())
