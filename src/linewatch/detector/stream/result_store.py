"""Storing a scored batch: kept images, the SQL record, Redis live state, the result and dead-letter topics.

Each step is idempotent and retried on its own until it succeeds (or the worker is told to stop),
and a step that succeeded is not repeated: a Redis outage neither rewrites SQL rows nor counts a
dead letter twice. Offsets are committed by the caller only after :meth:`ResultStore.store` returns True.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

import cv2
from kafka import KafkaProducer
from sqlalchemy.engine import Engine

from linewatch.contracts.database import insert_ignore_duplicates, upsert_cameras
from linewatch.contracts.heatmap import render_overlay
from linewatch.contracts.live_state import LiveStateWriter
from linewatch.contracts.schema import Inspection
from linewatch.contracts.settings import KafkaSettings

from .batches import ScoredBatch
from .image_store import ImageStore

log = logging.getLogger(__name__)


class ResultStore:
    """Writes scored batches to every sink, retrying each sink until it succeeds."""

    def __init__(self, engine: Engine, live: LiveStateWriter, producer: KafkaProducer, kafka: KafkaSettings,
                 images: ImageStore, worker_id: str, on_retry: Callable[[str, BaseException], None] | None = None):
        self.engine = engine
        self.live = live
        self.producer = producer
        self.kafka = kafka
        self.images = images
        self.worker_id = worker_id
        self.on_retry = on_retry

    def store(self, batch: ScoredBatch, stop: threading.Event, give_up_after_stop_s: float = 30.0) -> bool:
        """Run every step not yet done; True when all are done, False if stopped first."""
        steps = [("overlays", self._overlays), ("images", self._images), ("sql", self._sql),
                 ("redis", self._redis), ("kafka", self._kafka)]
        for name, step in steps:
            if name in batch.done:
                continue
            if not self._retry(name, lambda s=step: s(batch), stop, give_up_after_stop_s):
                return False
            batch.done.add(name)
        return True

    def _retry(self, name: str, action: Callable[[], None], stop: threading.Event, grace_s: float) -> bool:
        delay, stopped_at = 0.2, None
        while True:
            try:
                action()
                return True
            except Exception as exc:  # noqa: BLE001 -- any sink failure is retried, never fatal
                if self.on_retry:
                    self.on_retry(name, exc)
                log.warning("storing to %s failed (%s: %s); retrying in %.1f s", name, type(exc).__name__, exc, delay)
            if stop.is_set():
                stopped_at = stopped_at or time.monotonic()
                if time.monotonic() - stopped_at > grace_s:
                    log.error("giving up on %s after stop; the batch stays uncommitted and will be redelivered", name)
                    return False
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _overlays(self, b: ScoredBatch) -> None:
        """Heatmap overlays (JPEG) for kept frames and for each camera's newest frame of the batch."""
        newest: dict[str, int] = {}
        for i, frame in enumerate(b.frames):
            newest[frame.meta.camera_id] = i
        for i in b.keep | set(newest.values()):
            frame, res = b.frames[i], b.results[i]
            overlay = render_overlay(frame.preview, b.maps[i], b.pixel_threshold, score=res.normalized_score)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
            if ok:
                b.overlays[i] = jpeg.tobytes()

    def _images(self, b: ScoredBatch) -> None:
        for i in sorted(b.keep):
            frame = b.frames[i]
            image_uri, heatmap_uri = self.images.keep(frame.meta, frame.raw.value or b"", b.overlays[i])
            b.results[i].image_uri, b.results[i].heatmap_uri = image_uri, heatmap_uri

    def _sql(self, b: ScoredBatch) -> None:
        now_ns = time.time_ns()
        rows, cameras = [], {}
        for res, frame in zip(b.results, b.frames, strict=True):
            res.latency.total_ms = (now_ns - frame.meta.captured_at_ns) / 1e6
            rows.append(res.to_row())
            f = res.frame
            if f.camera_id not in cameras or cameras[f.camera_id][1] < f.captured_at:
                cameras[f.camera_id] = (f.line_id, f.captured_at)
        with self.engine.begin() as conn:
            upsert_cameras(conn, cameras)
            insert_ignore_duplicates(conn, Inspection.__table__, rows, ["camera_id", "frame_id"])

    def _redis(self, b: ScoredBatch) -> None:
        if b.results:
            self.live.record(b.results, b.overlays)
        if b.dead:
            self.live.dead_lettered(d.reason for d in b.dead)

    def _kafka(self, b: ScoredBatch) -> None:
        futures = [self.producer.send(self.kafka.inspections_topic, key=r.frame.camera_id.encode(), value=r.to_json())
                   for r in b.results]
        now = dt.datetime.now(dt.UTC).isoformat().encode()
        for d in b.dead:
            headers = list(d.raw.headers or []) + [
                ("dlq.reason", d.reason.encode()),
                ("dlq.detail", d.detail.encode()[:4000]),
                ("dlq.source", d.raw.source.encode()),
                ("dlq.worker", self.worker_id.encode()),
                ("dlq.at", now),
            ]
            futures.append(self.producer.send(self.kafka.dead_letter_topic, key=d.raw.key, value=d.raw.value,
                                              headers=headers))
        self.producer.flush(timeout=60)
        for fut in futures:
            fut.get(timeout=0)  # raises the delivery error, if any

