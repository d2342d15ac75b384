"""A decoded batch of frames -> inspection results: the model, the verdicts, the defect regions, and which
frames to keep for review. The workers' scoring step, in one function."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

from linewatch.contracts.clock import DEFAULT_CLOCK, ClockRule
from linewatch.contracts.messages import FrameMeta, FrameRef, InspectionResult, Latency

from ..drift import DriftMonitor
from ..scoring import Scorer
from .batches import DeadLetter, PreparedFrame, ScoredBatch


def score_batch(scorer: Scorer, frames: list[PreparedFrame], worker_id: str, keep_good: Callable[[FrameMeta], bool],
                dead: list[DeadLetter] | None = None, batch_id: int | None = None,
                clock: ClockRule = DEFAULT_CLOCK, drift: DriftMonitor | None = None) -> ScoredBatch:
    """Score ``frames`` in one batch and build their results.

    Defective frames are always kept (with their regions); good ones when ``keep_good(meta)`` says so.
    ``inference_ms`` in each result is the model time of the whole batch; ``total_ms`` is filled in when
    the result is stored. ``queue_wait_ms`` starts at the frame's capture time while the camera's clock agrees
    with the frame's arrival, else at its arrival (``clock``; never negative); ``clock_skew_ms`` is the camera's
    skew. ``dead`` and ``batch_id`` are carried into the :class:`ScoredBatch` unchanged. With ``drift``, each
    frame's statistics and normalised image score join its camera's drift windows (in frame order) and its result
    carries the drift flag;
    the batch carries each of its cameras' drift state after it (:meth:`.DriftMonitor.state`).
    """
    if not frames:
        return ScoredBatch([], [], [], [], dead or [], batch_id, set())
    t0 = time.perf_counter()
    scores = scorer.score_frames([f.model_input for f in frames])
    inference_ms = (time.perf_counter() - t0) * 1000
    maps = scores.maps
    now = dt.datetime.now(dt.UTC)
    results, keep = [], set()
    for i, f in enumerate(frames):
        defect = bool(scores.is_defect[i])
        m = f.meta
        flag = None if drift is None else drift.observe(m.camera_id, scorer.version, scorer.model.metadata, f.stats,
                                                        float(scores.normalized[i]))
        origin_ns = clock.latency_origin_ns(m.captured_at_ns, f.raw.arrived_ns)
        results.append(InspectionResult(
            frame=FrameRef(camera_id=m.camera_id, line_id=m.line_id, frame_id=m.frame_id, part_id=m.part_id,
                           captured_at=m.captured_at, topic=f.raw.topic, partition=f.raw.partition,
                           offset=f.raw.offset),
            width=f.width, height=f.height, model_version=scorer.version,
            image_score=float(scores.image_scores[i]), normalized_score=float(scores.normalized[i]),
            verdict="defect" if defect else "good", threshold=scorer.image_threshold,
            regions=scorer.regions(maps[i], (f.height, f.width)) if defect else [],
            latency=Latency(queue_wait_ms=max(0.0, (f.decode_started_ns - origin_ns) / 1e6), decode_ms=f.decode_ms,
                            inference_ms=inference_ms, total_ms=0.0,
                            clock_skew_ms=clock.skew_ms(m.captured_at_ns, f.raw.arrived_ns)),
            processed_at=now, worker_id=worker_id, drift=flag, product=f.product,
        ))
        if defect or keep_good(m):
            keep.add(i)
    states = {} if drift is None else {c: drift.state(c) for c in {f.meta.camera_id for f in frames}}
    return ScoredBatch(results, frames, maps, [scorer.pixel_threshold] * len(frames), dead or [], batch_id, keep,
                       drift=states)
