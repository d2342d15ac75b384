"""Where the dashboard's data comes from.

Connections are cached per process (``st.cache_resource``). Live numbers come from Redis
(:class:`~linewatch.contracts.live_state.LiveStateReader`); history, galleries, the review queue and
labels from SQL. Counts over time (:func:`history`) are by processing time, like the live counts.
Every SQL query is bounded (a time window and/or a LIMIT, keyset pagination on ``(captured_at, id)``) and
follows an index of :mod:`linewatch.contracts.schema`; each statement is cut off after
``dashboard.query_timeout_s`` (PostgreSQL ``statement_timeout``; a progress handler on SQLite), so a slow query
shows an error instead of blocking a page.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import streamlit as st
from sqlalchemy import and_, event, func, or_, select, update
from sqlalchemy.engine import Engine

from linewatch.contracts.database import make_engine
from linewatch.contracts.labels import (
    count_confirmed_good_frames,
    effective_labels,
    record_labels,
)
from linewatch.contracts.live_state import LiveStateReader, connect
from linewatch.contracts.schema import Camera, Inspection, Label, ModelVersion, unix_seconds
from linewatch.contracts.settings import Settings, get_settings
from linewatch.dashboard import telemetry

HISTORY_ROW_LIMIT = 20_000


def settings() -> Settings:
    """The process-wide settings (environment ``LINEWATCH_*``, config file, secrets)."""
    return get_settings()


# ---- connections ------------------------------------------------------------------------------------


@st.cache_resource(show_spinner=False)
def _engine(url: str, pool_size: int, timeout_s: float) -> Engine:
    engine = make_engine(url, pool_size)
    _limit_statement_time(engine, timeout_s)
    _time_statements(engine)
    return engine


def engine() -> Engine:
    """The SQL engine of the configured database, shared by all sessions of this process."""
    s = settings()
    return _engine(s.database_url, s.database.pool_size, s.dashboard.query_timeout_s)


@st.cache_resource(show_spinner=False)
def _live(url: str, password: str | None) -> LiveStateReader:
    return LiveStateReader(connect(url, password))


def live() -> LiveStateReader | None:
    """The Redis live-state reader, or None when no Redis URL is configured. Its calls raise
    ``redis.RedisError`` (after the client's socket timeouts) when Redis is unreachable."""
    s = settings()
    if not s.redis.url:
        return None
    return _live(s.redis.url, s.redis.password.get_secret_value() if s.redis.password else None)


def _time_statements(engine: Engine) -> None:
    """Observe every statement's duration in ``linewatch_dashboard_query_seconds``."""
    @event.listens_for(engine, "before_cursor_execute")
    def _start(conn, _cursor, _statement, _params, _context, _executemany) -> None:
        conn.info["lw_started"] = time.perf_counter()  # statements on one connection run one at a time

    @event.listens_for(engine, "after_cursor_execute")
    def _stop(conn, _cursor, _statement, _params, _context, _executemany) -> None:
        started = conn.info.pop("lw_started", None)
        if started is not None:
            telemetry.QUERY_SECONDS.observe(time.perf_counter() - started)


def _limit_statement_time(engine: Engine, timeout_s: float) -> None:
    """Make every statement fail after ``timeout_s`` instead of running on."""
    if engine.dialect.name == "postgresql":
        @event.listens_for(engine, "connect")
        def _pg_timeout(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute(f"SET statement_timeout = {max(1, int(timeout_s * 1000))}")
            cur.close()
            dbapi_conn.commit()
        return
    if engine.dialect.name != "sqlite":
        return

    @event.listens_for(engine, "connect")
    def _sqlite_handler(dbapi_conn, record) -> None:
        deadline = [math.inf]
        record.info["lw_deadline"] = deadline
        # sqlite calls this every N virtual-machine steps; non-zero interrupts the statement.
        dbapi_conn.set_progress_handler(lambda: int(time.monotonic() > deadline[0]), 20_000)

    @event.listens_for(engine, "before_cursor_execute")
    def _arm(conn, _cursor, _statement, _params, _context, _executemany) -> None:
        deadline = conn.info.get("lw_deadline")
        if deadline is not None:
            deadline[0] = time.monotonic() + timeout_s

    def _disarm(dbapi_conn, record, *_args) -> None:
        deadline = record.info.get("lw_deadline")
        if deadline is not None:
            deadline[0] = math.inf

    event.listen(engine, "checkin", _disarm)


# ---- cameras and history ----------------------------------------------------------------------------


def sql_cameras(db: Engine) -> dict[str, str]:
    """camera_id -> line_id of every camera the record knows (the ``cameras`` table: one row per camera)."""
    with db.connect() as conn:
        return {c: line for c, line in conn.execute(select(Camera.camera_id, Camera.line_id).limit(10_000))}


@dataclass(frozen=True)
class Bucket:
    """Inspections of one camera in one time bucket."""

    start: dt.datetime
    line_id: str
    camera_id: str
    inspected: int
    defects: int


def history(db: Engine, line_ids: Sequence[str], start: dt.datetime, end: dt.datetime,
            bucket_s: int, product: str | None = None) -> list[Bucket]:
    """Per-camera inspection counts in ``bucket_s`` buckets of processing time over [start, end), from SQL, of
    ``product``'s frames only (None: every product's).

    Counted by ``processed_at`` (the worker's clock), as the live counts in Redis are: a backlog shows frames
    inspected now, not an empty window, and a camera whose clock is off neither hides nor freezes its frames.
    Buckets start at multiples of ``bucket_s`` Unix seconds (whole minutes for 60). One query on the index
    ``(processed_at)``; at most :data:`HISTORY_ROW_LIMIT` buckets.

    Raises:
        ValueError: ``bucket_s`` is not a positive whole number of seconds.
        SQLAlchemyError: the database failed or the query ran past ``dashboard.query_timeout_s``.
    """
    if int(bucket_s) != bucket_s or bucket_s <= 0:
        raise ValueError(f"bucket_s must be a positive whole number of seconds, not {bucket_s!r}")
    if not line_ids:
        return []
    with db.connect() as conn:
        bucket = (unix_seconds(Inspection.processed_at, conn.dialect.name) // int(bucket_s)).label("bucket")
        query = (
            select(bucket, Inspection.line_id, Inspection.camera_id, func.count().label("inspected"),
                   func.count().filter(Inspection.verdict == "defect").label("defects"))
            .where(Inspection.processed_at >= start, Inspection.processed_at < end,
                   Inspection.line_id.in_(list(line_ids)),
                   *([Inspection.product == product] if product is not None else []))
            .group_by(bucket, Inspection.line_id, Inspection.camera_id)
            .order_by(bucket, Inspection.line_id, Inspection.camera_id)
            .limit(HISTORY_ROW_LIMIT)
        )
        return [Bucket(dt.datetime.fromtimestamp(int(b) * int(bucket_s), dt.UTC), line_id, camera_id, int(inspected),
                       int(defects or 0))
                for b, line_id, camera_id, inspected, defects in conn.execute(query)]


# ---- frames: gallery, one frame (the review queue: review_queue.py) --------------------------------------


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the (captured_at, id) of the last row of a page (pages are newest first)."""

    captured_at: dt.datetime
    id: int


@dataclass
class FramePage:
    """One page of frames (Inspection rows, newest first) and the cursor of the next page, if any."""

    rows: list[Inspection]
    next: Cursor | None


def _older_than(cursor: Cursor | None) -> Any:
    if cursor is None:
        return None
    return or_(Inspection.captured_at < cursor.captured_at,
               and_(Inspection.captured_at == cursor.captured_at, Inspection.id < cursor.id))


def _page(db: Engine, query: Any, cursor: Cursor | None, limit: int) -> FramePage:
    condition = _older_than(cursor)
    if condition is not None:
        query = query.where(condition)
    query = query.order_by(Inspection.captured_at.desc(), Inspection.id.desc()).limit(limit + 1)
    with db.connect() as conn:
        rows = [Inspection(**r._mapping) for r in conn.execute(query)]
    more = len(rows) > limit
    rows = rows[:limit]
    return FramePage(rows, Cursor(rows[-1].captured_at, rows[-1].id) if more and rows else None)


@dataclass(frozen=True)
class GalleryFilter:
    """What the defect gallery shows: defects in [start, end), optionally of one line or camera and of one product
    (None: every product), with a normalised score of at least ``min_score``."""

    start: dt.datetime
    end: dt.datetime
    line_id: str | None = None
    camera_id: str | None = None
    min_score: float = 0.0
    product: str | None = None


def _columns() -> Any:
    return select(*Inspection.__table__.columns)


def defect_gallery(db: Engine, f: GalleryFilter, cursor: Cursor | None, limit: int) -> FramePage:
    """A page of defect frames matching ``f``, newest first (index ``(verdict|line_id|camera_id, captured_at)``)."""
    query = _columns().where(Inspection.verdict == "defect", Inspection.captured_at >= f.start,
                             Inspection.captured_at < f.end)
    if f.camera_id:
        query = query.where(Inspection.camera_id == f.camera_id)
    elif f.line_id:
        query = query.where(Inspection.line_id == f.line_id)
    if f.min_score > 0:
        query = query.where(Inspection.normalized_score >= f.min_score)
    if f.product is not None:
        query = query.where(Inspection.product == f.product)
    return _page(db, query, cursor, limit)


def ready_for_retraining(db: Engine, product: str | None = None) -> int:
    """Confirmed goods (``contracts.labels``, with the second-opinion rule) of ``product`` (None: of every product):
    what the trainer may learn from."""
    with db.connect() as conn:
        return count_confirmed_good_frames(conn, second_opinion_above=settings().trainer.second_opinion_above,
                                           product=product)


def frame(db: Engine, inspection_id: int) -> Inspection | None:
    """One inspection by id."""
    with db.connect() as conn:
        row = conn.execute(_columns().where(Inspection.id == inspection_id)).first()
    return Inspection(**row._mapping) if row else None


def label_of(db: Engine, inspection_ids: Sequence[int]) -> dict[int, tuple[str, str, dt.datetime]]:
    """Effective labels of some inspections: id -> (label, operator, created_at)."""
    if not inspection_ids:
        return {}
    eff = effective_labels()
    with db.connect() as conn:
        rows = conn.execute(select(eff.c.inspection_id, eff.c.label, eff.c.operator, eff.c.created_at)
                            .where(eff.c.inspection_id.in_(list(inspection_ids))))
        return {r.inspection_id: (r.label, r.operator, r.created_at) for r in rows}


# ---- labelling ------------------------------------------------------------------------------------------


def add_labels(db: Engine, inspection_ids: Sequence[int], label: str, operator: str,
               now: dt.datetime | None = None) -> int:
    """Record ``operator``'s label for each inspection through the one idempotent path,
    :func:`linewatch.contracts.labels.record_labels` (one action: all rows share one timestamp, so
    :func:`undo_last` takes them back together). Returns the rows written: 0 when every frame already carries
    this operator's same label (a double click).

    Raises:
        ValueError: ``label`` is not good/defect, or ``operator`` is empty.
        SQLAlchemyError: the database refused (e.g. an inspection id that does not exist).
    """
    with db.begin() as conn:
        written = record_labels(conn, inspection_ids, label, operator, now or dt.datetime.now(dt.UTC))
    telemetry.LABELS.labels(label).inc(len(written))
    return len(written)


def undo_last(db: Engine, operator: str, now: dt.datetime | None = None) -> list[int]:
    """Revoke ``operator``'s most recent labelling action (one label, or one bulk confirmation) by
    setting ``revoked_at``, and bring back the operator's earlier labels of those frames that the action replaced
    (a change of mind revokes them at the action's own time, :func:`.labels.record_labels`); returns the
    inspection ids it concerned (empty when there is nothing to undo)."""
    now = now or dt.datetime.now(dt.UTC)
    with db.begin() as conn:
        last = conn.execute(select(func.max(Label.created_at))
                            .where(Label.operator == operator, Label.revoked_at.is_(None))).scalar_one()
        if last is None:
            return []
        which = and_(Label.operator == operator, Label.revoked_at.is_(None), Label.created_at == last)
        ids = [r[0] for r in conn.execute(select(Label.inspection_id).where(which))]
        conn.execute(update(Label).where(which).values(revoked_at=now))
        conn.execute(update(Label).where(Label.operator == operator, Label.inspection_id.in_(ids),
                                         Label.revoked_at == last, Label.created_at < last).values(revoked_at=None))
    return ids


# ---- models ---------------------------------------------------------------------------------------------


def model_versions(db: Engine, limit: int = 200, product: str | None = None) -> list[ModelVersion]:
    """Registered model versions of ``product`` (None: of every product, by product), newest first."""
    query = select(*ModelVersion.__table__.columns)
    if product is not None:
        query = query.where(ModelVersion.product == product)
    with db.connect() as conn:
        rows = conn.execute(query.order_by(ModelVersion.product, ModelVersion.number.desc()).limit(limit))
        return [ModelVersion(**r._mapping) for r in rows]
