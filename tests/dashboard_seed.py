"""Fill SQL, Redis and the image store exactly as a detector worker would, from real bottle images.

Frames go through the worker's own steps: :func:`linewatch.detector.stream.frames.prepare_frame` (decode, preview,
model input), :func:`linewatch.detector.stream.inspection.score_batch` (the model, verdicts, regions, kept frames) and
:class:`linewatch.detector.stream.result_store.ResultStore`
(overlays with ``contracts.heatmap.render_overlay``, kept images, SQL rows, Redis live state). Only the
Kafka step is skipped: the dashboard never reads the inspections topic.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from linewatch.contracts.live_state import LiveStateWriter
from linewatch.contracts.messages import FrameMeta, InspectionResult
from linewatch.contracts.schema import Base, ModelVersion
from linewatch.contracts.settings import KafkaSettings
from linewatch.detector.model_files import read_metadata
from linewatch.detector.scoring import Scorer
from linewatch.detector.stream.batches import PreparedFrame, RawFrame
from linewatch.detector.stream.frames import prepare_frame
from linewatch.detector.stream.image_store import ImageStore
from linewatch.detector.stream.inspection import score_batch
from linewatch.detector.stream.result_store import ResultStore

WORKER_ID = "seed-worker-1"


@dataclass(frozen=True)
class CameraPlan:
    """Which real images one camera sees, in order."""

    camera_id: str
    line_id: str
    images: Sequence[Path]


@dataclass
class Seeded:
    """What the seed wrote: every result (with image URIs of kept frames) in order of capture."""

    results: list[InspectionResult] = field(default_factory=list)

    def counts(self, *, camera: str | None = None, line: str | None = None) -> tuple[int, int]:
        """(inspected, defects) of one camera or one line."""
        mine = [r for r in self.results
                if (camera is None or r.frame.camera_id == camera) and (line is None or r.frame.line_id == line)]
        return len(mine), sum(r.verdict == "defect" for r in mine)

    def rate_text(self, **which: str) -> str:
        """The defect rate as the Live page writes it (``40.0%``)."""
        inspected, defects = self.counts(**which)
        return f"{defects / inspected:.1%}"

    @property
    def kept(self) -> list[InspectionResult]:
        return [r for r in self.results if r.image_uri]


def reset_sql(engine: Engine) -> None:
    """Empty every linewatch table (the schema must exist)."""
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


def seed(engine: Engine, live: LiveStateWriter, image_root: Path, scorer: Scorer, plans: Sequence[CameraPlan],
         spacing_s: float = 15.0, end: dt.datetime | None = None, appended_at_capture: bool = False) -> Seeded:
    """Score each camera's images and store them as one worker batch per camera.

    Frames are captured ``spacing_s`` apart, the last one at ``end`` (default: now), each camera a second
    before the one planned after it (so no two frames share a capture time). ``appended_at_capture``: the broker
    appended each frame when it was captured (a ``LogAppendTime`` topic), so a frame captured long ago is a backlog
    (latency from its capture) rather than a camera clock behind (latency from now). Kept frames, as the
    worker keeps them: every defect, and of the good frames those with an even frame id (standing in for
    the worker's hash sample). Also writes a heartbeat of the seed worker.
    """
    end_ns = int((end or dt.datetime.now(dt.UTC)).timestamp() * 1e9)
    images = ImageStore(image_root)
    store = ResultStore(engine, live, producer=None, kafka=KafkaSettings(), images=images, worker_id=WORKER_ID,
                        on_retry=_raise)
    out = Seeded()
    for j, plan in enumerate(plans):
        n = len(plan.images)
        last_ns = end_ns - (len(plans) - 1 - j) * 1_000_000_000
        frames: list[PreparedFrame] = []
        for i, path in enumerate(plan.images):
            meta = FrameMeta(plan.camera_id, plan.line_id, i + 1, last_ns - int((n - 1 - i) * spacing_s * 1e9),
                             "image/png", part_id=f"{path.parent.name}/{path.name}")
            raw = RawFrame("seed.frames", 0, i, plan.camera_id.encode(), path.read_bytes(), meta.headers(),
                           broker_ns=meta.captured_at_ns if appended_at_capture else None)
            prepared = prepare_frame(raw, scorer.geometry, 40_000_000)
            assert isinstance(prepared, PreparedFrame), prepared
            frames.append(prepared)
        batch = score_batch(scorer, frames, WORKER_ID, keep_good=lambda meta: meta.frame_id % 2 == 0)
        batch.done.add("kafka")  # no broker in these tests: everything else is stored as the worker does
        assert store.store(batch, threading.Event())
        out.results.extend(batch.results)
    live.heartbeat(WORKER_ID, {
        "model_version": scorer.version, "frames_per_s": 4.2, "inspected": len(out.results), "dead_lettered": 0,
        "partitions": ["seed.frames/0"], "lag": {"seed.frames/0": 3}, "device": "cpu", "host": "test",
        "pid": 0, "started_at": time.time(),
    })
    return out


def register_model(engine: Engine, model_dir: Path, version: str) -> None:
    """Record the seed's model as the active version of the registry (as the trainer or ``up`` would)."""
    meta = read_metadata(model_dir)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        conn.execute(ModelVersion.__table__.insert().values(
            version=version, number=1, parent_version=None, backbone=meta["backbone"], created_at=now,
            artifact_uri=Path(model_dir).resolve().as_uri(), manifest=meta.get("manifest", []),
            metrics={"validation": meta.get("validation")}, thresholds=meta["thresholds"], status="active",
            activated_by="seed", activated_at=now, notes="registered by the dashboard test seed"))


def _raise(sink: str, exc: BaseException) -> None:
    raise RuntimeError(f"seeding {sink} failed") from exc
