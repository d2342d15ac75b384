"""Image retention on a real SQLite record and real files: kept frames go by age, oldest first, never those
with an operator label in force or named in a model's training manifest; their rows stay, image URIs cleared."""

from __future__ import annotations

import datetime as dt
import os
import time

from sqlalchemy import select

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.files import uri_of
from linewatch.contracts.schema import Inspection, Label, ModelVersion
from linewatch.detector.stream.image_retention import ImageRetention, RetentionRule

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def _row(n: int, processed_at: dt.datetime, image: str | None) -> dict:
    return {"camera_id": "cam-1", "line_id": "L1", "frame_id": n, "part_id": None, "captured_at": processed_at,
            "processed_at": processed_at, "model_version": "v1", "image_score": 0.1, "normalized_score": 0.2,
            "verdict": "good", "threshold": 0.5, "regions": [], "width": 8, "height": 8, "queue_wait_ms": 1.0,
            "decode_ms": 1.0, "inference_ms": 1.0, "total_ms": 3.0, "worker_id": "w", "image_uri": image,
            "heatmap_uri": image and image.replace(".jpg", ".heatmap.jpg")}


def test_retention_removes_old_unprotected_frames_and_keeps_labelled_and_trained_on(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'record.db'}")
    migrate(engine)
    store = tmp_path / "images"
    store.mkdir()
    rows = []
    for n in range(6):  # days 40, 39, ... 35 old: all past a 30-day limit, then two recent ones
        image = store / f"{n}.jpg"
        image.write_bytes(b"j" * 100)
        image.with_name(f"{n}.heatmap.jpg").write_bytes(b"h" * 10)
        rows.append(_row(n, NOW - dt.timedelta(days=40 - n), uri_of(image)))
    for n in (6, 7):
        image = store / f"{n}.jpg"
        image.write_bytes(b"j" * 100)
        image.with_name(f"{n}.heatmap.jpg").write_bytes(b"h" * 10)
        rows.append(_row(n, NOW - dt.timedelta(days=1), uri_of(image)))
    with engine.begin() as conn:
        conn.execute(Inspection.__table__.insert(), rows)
        ids = {r.frame_id: r.id for r in conn.execute(select(Inspection.frame_id, Inspection.id))}
        conn.execute(Label.__table__.insert(), [  # frame 1: a label in force; frame 2: a label undone
            {"inspection_id": ids[1], "label": "good", "operator": "op", "created_at": NOW, "revoked_at": None},
            {"inspection_id": ids[2], "label": "good", "operator": "op", "created_at": NOW, "revoked_at": NOW}])
        conn.execute(ModelVersion.__table__.insert().values(  # frame 3 is in a model's training set
            version="v1", number=1, backbone="b", created_at=NOW, artifact_uri="file:///m", status="active",
            manifest=[{"path": str(store / "3.jpg")}]))
    stale = store / ".9.jpg.77.tmp"  # a crashed worker's partial file, and one being written now
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = store / ".10.jpg.78.tmp"
    fresh.write_bytes(b"x")

    report = ImageRetention(engine, store, RetentionRule(max_age_days=30, min_free_ratio=0.0)).run_once(now=NOW)

    assert report.by_age == 4 and report.by_space == 0 and report.freed_bytes == 4 * 110
    assert not report.full
    assert sorted(p.name for p in store.glob("*.jpg") if ".heatmap." not in p.name) == ["1.jpg", "3.jpg", "6.jpg",
                                                                                         "7.jpg"]
    with engine.connect() as conn:
        kept = dict(conn.execute(select(Inspection.frame_id, Inspection.image_uri)).all())
    assert [n for n, uri in sorted(kept.items()) if uri] == [1, 3, 6, 7]  # rows stay, image URIs cleared
    assert len(kept) == 8
    assert not stale.exists() and fresh.exists()
