"""Counts over time are by processing time, in whole minutes, on every store: the SQL history on SQLite and
PostgreSQL, and the live counts in Redis. A worker ten minutes behind still shows frames inspected now."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy.engine import Engine

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.live_state import LiveStateReader, LiveStateWriter
from linewatch.contracts.messages import FrameRef, InspectionResult, Latency
from linewatch.contracts.schema import Inspection
from linewatch.dashboard.data import history

from dashboard_seed import reset_sql

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)  # a whole minute
BEHIND = dt.timedelta(minutes=10)  # each frame is processed this long after its capture
STEP_S = 5


def _rows(camera: str, line: str, minutes: int, start: dt.datetime) -> list[dict]:
    """One frame every STEP_S seconds for ``minutes`` minutes processed from ``start``; every 4th a defect."""
    out = []
    for i in range(minutes * 60 // STEP_S):
        processed = start + dt.timedelta(seconds=i * STEP_S, milliseconds=250)
        out.append({"camera_id": camera, "line_id": line, "frame_id": i + 1, "part_id": None,
                    "captured_at": processed - BEHIND, "processed_at": processed, "model_version": "v1",
                    "image_score": 1.0, "normalized_score": 1.0, "verdict": "defect" if i % 4 == 0 else "good",
                    "threshold": 1.0, "regions": [], "width": 8, "height": 8, "queue_wait_ms": 0.0,
                    "decode_ms": 0.0, "inference_ms": 0.0, "total_ms": BEHIND.total_seconds() * 1000,
                    "worker_id": "w"})
    return out


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_server").url
    engine = make_engine(url)
    migrate(engine)
    reset_sql(engine)
    yield engine
    engine.dispose()


def test_sql_history_buckets_whole_minutes_of_processing_time(engine):
    rows = _rows("cam-a", "L1", 6, T0) + _rows("cam-b", "L1", 6, T0) + _rows("cam-c", "L2", 6, T0)
    with engine.begin() as conn:
        conn.execute(Inspection.__table__.insert(), rows)

    buckets = history(engine, ["L1", "L2"], T0, T0 + dt.timedelta(minutes=6), 60)
    for cam in ("cam-a", "cam-b", "cam-c"):
        mine = [b for b in buckets if b.camera_id == cam]
        assert [b.start for b in mine] == [T0 + dt.timedelta(minutes=m) for m in range(6)]
        assert [(b.inspected, b.defects) for b in mine] == [(12, 3)] * 6
    assert {b.line_id for b in buckets if b.camera_id == "cam-c"} == {"L2"}
    # Only the lines asked for; five-minute buckets hold five minutes.
    assert {b.camera_id for b in history(engine, ["L1"], T0, T0 + dt.timedelta(minutes=6), 60)} == {"cam-a", "cam-b"}
    five = history(engine, ["L1"], T0, T0 + dt.timedelta(minutes=6), 300)
    assert [(b.camera_id, b.start, b.inspected) for b in five if b.camera_id == "cam-a"] == \
        [("cam-a", T0, 60), ("cam-a", T0 + dt.timedelta(minutes=5), 12)]
    # The window is processing time: ten minutes before T0, when these frames were captured, nothing was inspected.
    assert history(engine, ["L1", "L2"], T0 - BEHIND, T0, 60) == []
    assert history(engine, [], T0, T0 + dt.timedelta(minutes=6), 60) == []
    with pytest.raises(ValueError):
        history(engine, ["L1"], T0, T0 + dt.timedelta(minutes=6), 0)


def _result(camera: str, frame_id: int, processed: dt.datetime, verdict: str) -> InspectionResult:
    return InspectionResult(
        frame=FrameRef(camera_id=camera, line_id="L1", frame_id=frame_id, captured_at=processed - BEHIND,
                       topic="lw.frames", partition=0, offset=frame_id),
        width=8, height=8, model_version="v1", image_score=2.0 if verdict == "defect" else 0.5,
        normalized_score=2.0 if verdict == "defect" else 0.5, verdict=verdict, threshold=1.0,
        latency=Latency(queue_wait_ms=0, decode_ms=1, inference_ms=1, total_ms=BEHIND.total_seconds() * 1000),
        processed_at=processed, worker_id="w")


def test_live_counts_in_redis_follow_processing_time_so_a_backlog_is_not_an_empty_window(redis_service):
    client = redis.Redis(port=redis_service.port, db=5)
    client.flushdb()
    try:
        now = dt.datetime.now(dt.UTC)
        results = [_result("cam-a", i + 1, now - dt.timedelta(seconds=200 - 10 * i), "defect" if i % 5 == 0 else
                           "good") for i in range(20)]
        assert LiveStateWriter(client).record(results) == 20
        reader = LiveStateReader(client)
        last5 = reader.totals("camera", "cam-a", now - dt.timedelta(minutes=5), now)
        assert (last5.inspected, last5.defects) == (20, 4)
        line = reader.totals("line", "L1", now - dt.timedelta(minutes=5), now)
        assert (line.inspected, line.defects) == (20, 4)
        # Their capture times, ten minutes back, hold nothing.
        before = reader.totals("camera", "cam-a", now - BEHIND - dt.timedelta(minutes=5), now - BEHIND -
                               dt.timedelta(minutes=1))
        assert before.inspected == 0
    finally:
        client.flushdb()
        client.close()
