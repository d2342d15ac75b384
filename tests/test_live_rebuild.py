"""Live counts rebuilt from the record: per-minute counts from SQL, on SQLite (PostgreSQL runs through the
pipeline tests), and the rebuilder's reach."""

from __future__ import annotations

import datetime as dt

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.schema import Inspection
from linewatch.detector.stream.live_rebuild import counts_by_minute

T0 = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)  # a whole minute


def _row(camera: str, line: str, frame_id: int, at: dt.datetime, verdict: str) -> dict:
    return {"camera_id": camera, "line_id": line, "frame_id": frame_id, "part_id": None, "captured_at": at,
            "processed_at": at, "model_version": "v1", "image_score": 1.0, "normalized_score": 1.0,
            "verdict": verdict, "threshold": 1.0, "regions": [], "width": 8, "height": 8, "queue_wait_ms": 0.0,
            "decode_ms": 0.0, "inference_ms": 0.0, "total_ms": 0.0, "worker_id": "w"}


def test_counts_by_minute_groups_whole_minutes_per_camera_and_line(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate(engine)
    s = dt.timedelta(seconds=1)
    rows = [_row("cam-a", "L1", 1, T0 + 1 * s, "good"), _row("cam-a", "L1", 2, T0 + 2 * s, "defect"),
            _row("cam-a", "L1", 3, T0 + 3 * s, "good"), _row("cam-a", "L1", 4, T0 + 59 * s, "defect"),
            _row("cam-b", "L1", 1, T0 + 30 * s, "good"), _row("cam-a", "L1", 5, T0 + 60 * s, "good"),
            _row("cam-a", "L1", 6, T0 - 1 * s, "good")]  # the minute before: outside the window
    with engine.begin() as conn:
        conn.execute(Inspection.__table__.insert(), rows)
        counts = counts_by_minute(conn, T0, T0 + dt.timedelta(minutes=2))
    m = int(T0.timestamp()) // 60
    assert counts == {
        ("camera", "cam-a", m): (4, 2), ("camera", "cam-b", m): (1, 0), ("line", "L1", m): (5, 2),
        ("camera", "cam-a", m + 1): (1, 0), ("line", "L1", m + 1): (1, 0),
    }
