"""Storing a scored batch: kept images, the SQL record, Redis live state, the result and dead-letter topics.

Offsets are committed by the caller only after :meth:`ResultStore.store` returns True. The steps, in order,
each done once (a retried batch skips the steps already done):

* images: each kept frame's original and overlay, best effort: when the disk is full, image retention
  (:mod:`.image_retention`) makes room once per batch; a frame whose files still cannot be written is stored
  without them, so a full disk never stops the record;
* SQL, the record: retried while the database is away (connection lost, timeout). A frame the database
  refuses for good (a value it cannot hold) is taken out of the batch and dead-lettered as ``unstorable``,
  the rest stored. The insert tells which frames are new, and only those reach live state: a redelivered
  frame is never counted twice, whatever Redis has kept;
* Redis live state, through :class:`.live_sink.LiveSink`: waits at most ``redis.wait_s``, then goes on;
* the inspections and dead-letter topics: retried until the broker takes them (the reject gates read them).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

import cv2
from kafka import KafkaProducer
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from linewatch.contracts.database import insert_ignore_duplicates, upsert_cameras
from linewatch.contracts.heatmap import render_overlay
from linewatch.contracts.live_state import LiveStateWriter
from linewatch.contracts.schema import Inspection
from linewatch.contracts.settings import KafkaSettings, RedisSettings

from . import telemetry
from .batches import ScoredBatch
from .image_retention import NO_SPACE, ImageRetention
from .image_store import ImageStore
from .live_sink import LiveSink

log = logging.getLogger(__name__)

# Errors after which the same statement can succeed later (the database away or busy); any other error of a
# frame's row is that frame's own and never goes away by retrying.
# ProgrammingError and NotSupportedError count as transient: a missing table or a revoked permission is the
# deployment's fault, not the frame's, and dead-lettering every frame until it is mended would lose them all.
TRANSIENT_SQL = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.InternalError, sa_exc.TimeoutError,
                 sa_exc.DisconnectionError, sa_exc.ProgrammingError, sa_exc.NotSupportedError, ConnectionError,
                 TimeoutError)
PERMANENT_SQL = (sa_exc.StatementError, ValueError, TypeError, OverflowError)
KEYS = ["camera_id", "frame_id"]
ROOM_SLACK_BYTES = 1 << 16  # file-system blocks and metadata beyond a frame's bytes, when retention makes room


class ResultStore:
    """Writes scored batches to every sink (see the module docstring for what each step does on failure).

    Args:
        retention: image retention, asked to make room when the disk is full (none: frames that do not fit are
            stored without their images).
        redis: ``wait_s`` and ``settle_s`` of the live state (see :class:`.live_sink.LiveSink`); default: the
            settings' defaults.
        on_retry: called with the step's name and the error each time a step is retried.
    """

    def __init__(self, engine: Engine, live: LiveStateWriter, producer: KafkaProducer, kafka: KafkaSettings,
                 images: ImageStore, worker_id: str, on_retry: Callable[[str, BaseException], None] | None = None,
                 redis: RedisSettings | None = None, retention: ImageRetention | None = None):
        redis = redis or RedisSettings()
        self.retention = retention
        self._waiting: tuple[str, float] | None = None  # (sink, since: monotonic s) while a sink refuses
        self.engine = engine
        self.live = LiveSink(live, redis.wait_s, redis.settle_s)
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

    def waiting(self) -> tuple[str, float] | None:
        """The sink a batch has been waiting for, and for how long (s), while one refuses; else None
        (thread-safe: read by the heartbeat and the health endpoints)."""
        waiting = self._waiting
        return None if waiting is None else (waiting[0], time.monotonic() - waiting[1])

    def _retry(self, name: str, action: Callable[[], None], stop: threading.Event, grace_s: float) -> bool:
        delay, stopped_at = 0.2, None
        try:
            return self._retry_loop(name, action, stop, grace_s, delay, stopped_at)
        finally:
            self._waiting = None

    def _retry_loop(self, name: str, action: Callable[[], None], stop: threading.Event, grace_s: float,
                    delay: float, stopped_at: float | None) -> bool:
        while True:
            try:
                action()
                return True
            except Exception as exc:  # noqa: BLE001 -- a sink that is away is retried, never fatal
                if self._waiting is None:
                    self._waiting = (name, time.monotonic())
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
            overlay = render_overlay(frame.preview, b.maps[i], b.pixel_thresholds[i], score=res.normalized_score)
            ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
            if ok:
                b.overlays[i] = jpeg.tobytes()

    def _images(self, b: ScoredBatch) -> None:
        room_made = False  # retention runs at most once per batch: a disk it cannot clear stays full a while
        for i in sorted(b.keep):
            try:
                uris = self._keep(b, i)
            except Exception as exc:  # noqa: BLE001 -- one frame's image never holds the record
                if not isinstance(exc, OSError) or self.retention is None or room_made or exc.errno not in NO_SPACE:
                    uris = self._not_kept(b, i, exc)
                else:
                    self.retention.refused(exc)
                    room_made = True
                    try:
                        need = len(b.frames[i].raw.value or b"") + len(b.overlays[i]) + ROOM_SLACK_BYTES
                        uris = self._keep(b, i) if self.retention.make_room(need) else self._not_kept(b, i, exc)
                    except Exception as again:  # noqa: BLE001 -- as above
                        uris = self._not_kept(b, i, again)
            if uris is not None:
                b.results[i].image_uri, b.results[i].heatmap_uri = uris

    def _keep(self, b: ScoredBatch, i: int) -> tuple[str, str]:
        frame = b.frames[i]
        return self.images.keep(frame.meta, frame.raw.value or b"", b.overlays[i])

    def _not_kept(self, b: ScoredBatch, i: int, exc: Exception) -> None:
        """A frame whose files the disk refused (full, read-only ...), or that could not be re-encoded: the record
        goes on without its image."""
        meta = b.frames[i].meta
        if self.retention is not None and isinstance(exc, OSError):
            self.retention.refused(exc)
        telemetry.IMAGES_NOT_KEPT.labels(reason=type(exc).__name__).inc()
        log.error("frame %s/%d stored without its image: %s", meta.camera_id, meta.frame_id, exc)
        return None

    def _sql(self, b: ScoredBatch) -> None:
        now_ns = time.time_ns()
        for res, frame in zip(b.results, b.frames, strict=True):
            # from where the queue wait started (the capture, or the arrival when the camera's clock is off)
            res.latency.total_ms = res.latency.queue_wait_ms + max(0, now_ns - frame.decode_started_ns) / 1e6
        try:
            b.inserted |= self._insert(range(len(b.results)), b)
        except TRANSIENT_SQL:
            raise
        except PERMANENT_SQL as exc:  # some frame's row can never be stored: find it, row by row
            log.warning("the database refused a batch (%s: %s); storing its frames one by one",
                        type(exc).__name__, exc)
            refused = {}
            for i in range(len(b.results)):
                try:
                    b.inserted |= self._insert([i], b)  # kept on the batch: a retry after a transient error
                except TRANSIENT_SQL:                    # finds these rows present, not new
                    raise
                except PERMANENT_SQL as one:
                    refused[i] = f"the database refused its row: {type(one).__name__}: {one}"[:2000]
            b.take_out(refused, reason="unstorable")
        firsts: dict[tuple, int] = {}  # a frame twice in one batch (a camera's resend) is new once
        for i, r in enumerate(b.results):
            firsts.setdefault((r.frame.camera_id, r.frame.frame_id), i)
        b.new = {i for key, i in firsts.items() if key in b.inserted}

    def _insert(self, indices, b: ScoredBatch) -> set[tuple]:
        """Insert the rows of ``b.results[indices]`` in one transaction; returns the keys of the new rows."""
        rows, cameras = [], {}
        for i in indices:
            res = b.results[i]
            rows.append(res.to_row())
            f = res.frame
            # last seen by the worker's clock: a camera whose clock runs ahead must not pin its row in the future
            if f.camera_id not in cameras or cameras[f.camera_id][1] < res.processed_at:
                cameras[f.camera_id] = (f.line_id, res.processed_at)
        with self.engine.begin() as conn:
            upsert_cameras(conn, cameras)
            return insert_ignore_duplicates(conn, Inspection.__table__, rows, KEYS)

    def _redis(self, b: ScoredBatch) -> None:
        """Live state of the frames new to the record (never raises; see :class:`.live_sink.LiveSink`)."""
        new = sorted(b.new)
        self.live.write([b.results[i] for i in new], {j: b.overlays[i] for j, i in enumerate(new) if i in b.overlays},
                        [d.reason for d in b.dead], b.drift)

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

