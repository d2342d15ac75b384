"""A camera service: capture frames at a set rate and publish them to Kafka, losing none silently.

Two threads joined by a bounded buffer: capture (rate-limited; reconnects a dropped camera with
exponential backoff and counts the gap) and publish (idempotent producer, acks=all). When Kafka
is slower than the camera, a live source drops its oldest buffered frames (counted); a file or
folder source waits instead, since it loses nothing by waiting.

No single frame stops the camera. A frame larger than the producer's ``max_request_size`` or the
frames topic's ``max.message.bytes`` (asked of the broker at start) is skipped and counted as dropped
(``too_large``), and the frames after it are published. A send that fails for good (an error the
client does not retry) may leave kafka-python's idempotent producer in a fatal state in which every
later send fails too, so the camera then builds a new producer and sends again, in order, the frames
that failed only because they were in the broken producer (each at most ``MAX_SENDS`` times). At the
end, ``captured = published + dropped + failed``.
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass

from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError, RecordListTooLargeError
from prometheus_client import Counter

from linewatch.contracts.kafka import make_producer, topic_max_message_bytes
from linewatch.contracts.messages import FrameMeta, check_id
from linewatch.contracts.settings import Settings

from .sources import Capture, SourceError

log = logging.getLogger(__name__)

CAPTURED = Counter("linewatch_frames_captured_total", "Frames captured", ["camera_id"])
PUBLISHED = Counter("linewatch_frames_published_total", "Frames acknowledged by Kafka", ["camera_id"])
DROPPED = Counter("linewatch_frames_dropped_total", "Frames dropped before Kafka, by reason (buffer_full: the "
                  "camera outran Kafka; too_large: over the producer's or the topic's size limit; stopped: still "
                  "buffered when the camera stopped with Kafka away)", ["camera_id", "reason"])
FAILED = Counter("linewatch_frames_publish_failed_total", "Frames Kafka did not acknowledge", ["camera_id"])
RECONNECTS = Counter("linewatch_camera_reconnects_total", "Camera reconnections", ["camera_id"])
NEW_PRODUCERS = Counter("linewatch_camera_producer_rebuilds_total",
                        "Kafka producers rebuilt after an error that leaves the old one unusable", ["camera_id"])

# Bytes a frame's record takes beyond its key, value and headers (record and batch framing, varints).
RECORD_OVERHEAD_BYTES = 256
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)
MAX_SENDS = 3  # a frame failing for good this often (each time in a new producer) is counted as failed


@dataclass
class CameraCounters:
    """Per-camera counts: ``captured = published + dropped + failed`` once the camera has stopped. ``too_large``
    counts the frames among ``dropped`` that were over a size limit; ``gap_s`` is the time the camera was
    unavailable."""

    captured: int = 0
    published: int = 0
    dropped: int = 0
    failed: int = 0
    too_large: int = 0
    reconnects: int = 0
    gap_s: float = 0.0


class FrameIds:
    """Strictly increasing frame ids that survive a restart: max(previous + 1, microseconds since the epoch)."""

    def __init__(self) -> None:
        self.last = 0

    def next(self) -> int:
        self.last = max(self.last + 1, time.time_ns() // 1000)
        return self.last


class CameraService:
    """Runs one camera until its source ends, ``max_frames`` are published, or :meth:`stop` is called."""

    def __init__(self, settings: Settings, camera_id: str, line_id: str, source, fps: float = 0.0,
                 max_frames: int | None = None, producer=None):
        """Raises:
            MessageError: (a ValueError) ``camera_id`` or ``line_id`` that no store could hold (too long, a
                NUL or another control character): every frame of it would be dead-lettered.
        """
        check_id("camera_id", camera_id)
        check_id("line_id", line_id)
        self.settings = settings
        self.camera_id, self.line_id = camera_id, line_id
        self.source = source
        self.fps = fps
        self.max_frames = max_frames
        self.counters = CameraCounters()
        self.buffer: collections.deque[tuple[FrameMeta, bytes]] = collections.deque()
        self.in_flight: dict[int, tuple[FrameMeta, bytes]] = {}  # frame_id -> frame, until acknowledged
        self.generation = 0  # of the producer; a send remembers the one it went to
        self.broken_generations: set[int] = set()  # producers that had an error they do not survive
        self.resend: list[tuple[FrameMeta, bytes]] = []  # failed in a producer that then broke
        self.sends: collections.Counter[int] = collections.Counter()  # frame_id -> sends so far
        self.cond = threading.Condition()
        self.capture_done = False
        self.stop_event = threading.Event()
        self.producer = producer or self._new_producer()
        self._producer_broken = False  # set by a send that failed for good; the publish loop replaces it
        self.max_record_bytes = settings.kafka.max_message_bytes  # lowered to the topic's limit in run()
        self.ids = FrameIds()
        self.lock = threading.Lock()

    def _new_producer(self):
        return make_producer(self.settings.kafka, delivery_timeout_ms=600_000, max_block_ms=10_000)

    def stop(self) -> None:
        self.stop_event.set()
        with self.cond:
            self.cond.notify_all()

    def run(self, install_signal_handlers: bool = True) -> CameraCounters:
        """Capture and publish until done; flushes Kafka before returning the counters."""
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        topic_limit = topic_max_message_bytes(self.settings.kafka, self.settings.kafka.frames_topic)
        if topic_limit is not None and topic_limit < self.max_record_bytes:
            log.info("camera %s: topic %s takes records up to %d bytes; larger frames are skipped", self.camera_id,
                     self.settings.kafka.frames_topic, topic_limit)
            self.max_record_bytes = topic_limit
        capture = threading.Thread(target=self._capture_loop, name="capture", daemon=True)
        reporter = threading.Thread(target=self._report_loop, name="report", daemon=True)
        capture.start()
        reporter.start()
        try:
            self._publish_loop()
        finally:
            self.stop_event.set()
            capture.join(timeout=10)
            self.producer.flush(timeout=60)
            self.producer.close(timeout=10)
            self.source.close()
            with self.lock:  # failed in a broken producer, and stopped before they could be sent again
                self.counters.failed += len(self.resend)
                FAILED.labels(self.camera_id).inc(len(self.resend))
                self.resend.clear()
        log.info("camera %s finished: %s", self.camera_id, json.dumps(asdict(self.counters)))
        return self.counters

    # ---- capture --------------------------------------------------------------------------------------

    def _capture_loop(self) -> None:
        backoff = self.settings.ingest.reconnect_initial_s
        interval = 1.0 / self.fps if self.fps > 0 else 0.0
        next_at = time.monotonic()
        limit = self.max_frames
        try:
            while not self.stop_event.is_set() and (limit is None or self.counters.captured < limit):
                if interval:
                    delay = next_at - time.monotonic()
                    if delay > 0 and self.stop_event.wait(delay):
                        break
                    next_at = max(next_at + interval, time.monotonic() - interval)  # no burst after a stall
                try:
                    capture = self.source.read()
                except SourceError as exc:
                    backoff = self._reconnect(exc, backoff)
                    continue
                backoff = self.settings.ingest.reconnect_initial_s
                if capture is None:
                    break  # end of a file or folder
                self._enqueue(capture)
        finally:
            with self.cond:
                self.capture_done = True
                self.cond.notify_all()

    def _reconnect(self, exc: SourceError, backoff: float) -> float:
        """Wait ``backoff`` seconds, reopen the source, count the gap; returns the next backoff."""
        log.warning("camera %s: %s; reconnecting in %.1f s", self.camera_id, exc, backoff)
        started = time.monotonic()
        self.stop_event.wait(backoff)
        try:
            self.source.open()
            self.counters.reconnects += 1
            RECONNECTS.labels(self.camera_id).inc()
            log.info("camera %s reconnected", self.camera_id)
        except SourceError as again:
            log.warning("camera %s: reconnect failed: %s", self.camera_id, again)
        self.counters.gap_s += time.monotonic() - started
        return min(backoff * 2, self.settings.ingest.reconnect_max_s)

    def _enqueue(self, capture: Capture) -> None:
        meta = FrameMeta(self.camera_id, self.line_id, self.ids.next(), time.time_ns(), capture.content_type,
                         capture.part_id)
        with self.cond:
            cap = self.settings.ingest.buffer_frames
            if not self.source.live:
                while len(self.buffer) >= cap and not self.stop_event.is_set():
                    self.cond.wait(0.1)
            elif len(self.buffer) >= cap:
                self.buffer.popleft()
                self.counters.dropped += 1
                DROPPED.labels(self.camera_id, "buffer_full").inc()
            self.buffer.append((meta, capture.data))
            self.counters.captured += 1
            CAPTURED.labels(self.camera_id).inc()
            self.cond.notify_all()

    # ---- publish --------------------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        topic = self.settings.kafka.frames_topic
        key = self.camera_id.encode()
        while True:
            with self.cond:
                while not self.buffer and not self.capture_done and not self.stop_event.is_set():
                    self.cond.wait(0.5)
                head = self.buffer[0] if self.buffer else None
            if head is None:
                self.producer.flush(timeout=60)  # the last sends' callbacks run now, and may ask to resend
                if self._producer_broken and self.resend and not self.stop_event.is_set():
                    self._replace_producer()
                    continue
                return
            meta, data = head
            if self._producer_broken:
                self._replace_producer()
                continue  # frames to send again are now at the buffer's head
            headers = meta.headers()
            size = len(key) + len(data) + sum(len(k) + len(v) for k, v in headers) + RECORD_OVERHEAD_BYTES
            try:
                if size > self.max_record_bytes:
                    raise MessageSizeTooLargeError(f"about {size} bytes with its headers; the limit is "
                                                   f"{self.max_record_bytes} bytes")
                future = self.producer.send(topic, key=key, value=data, headers=headers)
            except _TOO_LARGE as exc:  # it can never be sent: skip it, and keep the line going
                self._too_large(meta, exc)
                future = None
            except KafkaTimeoutError as exc:  # buffer full or metadata unavailable: keep the frame, retry in order
                log.warning("camera %s: Kafka not accepting frames (%s); retrying", self.camera_id, exc)
                if self.stop_event.wait(1.0):
                    with self.cond:  # stopping while Kafka is away: what is still buffered is lost, and counted
                        self.counters.dropped += len(self.buffer)
                        DROPPED.labels(self.camera_id, "stopped").inc(len(self.buffer))
                        self.buffer.clear()
                    return
                continue
            except KafkaError as exc:  # not retried by the client (a closed or fatally failed producer)
                log.error("camera %s: the producer refused frame %d (%s); building a new producer",
                          self.camera_id, meta.frame_id, exc)
                self._producer_broken = True
                continue
            if future is not None:
                with self.lock:
                    self.in_flight[meta.frame_id] = (meta, data)
                    self.sends[meta.frame_id] += 1
                future.add_callback(self._acked, meta).add_errback(self._failed, meta, self.generation)
            with self.cond:
                self.buffer.popleft()
                self.cond.notify_all()

    def _replace_producer(self) -> None:
        """Close a producer that a failed send left unusable (its pending frames fail and are counted) and
        build a new one: an idempotent producer in a fatal state fails every later send."""
        old, self._producer_broken = self.producer, False
        try:
            old.close(timeout=5)  # its pending sends complete now, each through _acked or _failed
        except Exception as exc:  # noqa: BLE001 -- a broken producer may fail to close; it is dropped anyway
            log.debug("closing the old producer: %s", exc)
        self.producer = self._new_producer()
        self.generation += 1
        NEW_PRODUCERS.labels(self.camera_id).inc()
        with self.lock:
            again, self.resend = sorted(self.resend, key=lambda f: f[0].frame_id), []
        with self.cond:
            self.buffer.extendleft(reversed(again))  # oldest first, ahead of the frames not yet sent
        if again:
            log.info("camera %s: sending %d frame(s) again with the new producer", self.camera_id, len(again))

    def _too_large(self, meta: FrameMeta, exc: BaseException) -> None:
        with self.lock:
            self.counters.dropped += 1
            self.counters.too_large += 1
        DROPPED.labels(self.camera_id, "too_large").inc()
        log.error("camera %s: frame %d dropped: too large (%s)", self.camera_id, meta.frame_id, exc)

    def _acked(self, meta: FrameMeta, _metadata) -> None:
        """Callback of a send (kafka-python calls it as ``callback(*args, record_metadata)``)."""
        with self.lock:
            self.counters.published += 1
            self.in_flight.pop(meta.frame_id, None)
            self.sends.pop(meta.frame_id, None)
        PUBLISHED.labels(self.camera_id).inc()

    def _failed(self, meta: FrameMeta, generation: int, exc: BaseException) -> None:
        """Errback of a send (kafka-python calls it as ``errback(*args, exception)``).

        The first error a producer does not survive is this frame's own. kafka-python then aborts the
        producer's later batches with that same exception, so a failure in an already broken producer says
        nothing about its frame: such frames are sent again with the next producer.
        """
        retriable = getattr(exc, "retriable", False)
        with self.lock:
            frame = self.in_flight.pop(meta.frame_id, None)
            collateral = generation in self.broken_generations
            if not retriable:
                self.broken_generations.add(generation)
                self._producer_broken = True
            if (collateral or (not retriable and not isinstance(exc, _TOO_LARGE))) and frame is not None \
                    and self.sends[meta.frame_id] < MAX_SENDS:
                self.resend.append(frame)
                log.warning("camera %s: frame %d failed in a broken producer (%s); it is sent again with a new "
                            "one", self.camera_id, meta.frame_id, exc)
                return
            self.sends.pop(meta.frame_id, None)
        if isinstance(exc, _TOO_LARGE) and not collateral:  # the broker's limit is lower than the topic said
            self._too_large(meta, exc)
            return
        with self.lock:
            self.counters.failed += 1
        FAILED.labels(self.camera_id).inc()
        log.error("camera %s: frame %d was not acknowledged by Kafka: %s", self.camera_id, meta.frame_id, exc)

    def _report_loop(self) -> None:
        while not self.stop_event.wait(10.0):
            log.info("camera %s: %s", self.camera_id, json.dumps(asdict(self.counters)))
