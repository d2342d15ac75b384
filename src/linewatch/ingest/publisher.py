"""Publishing one camera's frames to Kafka, in order, so that no single frame or producer error stalls the camera.

* A frame larger than the producer's ``max_request_size`` or the frames topic's ``max.message.bytes`` (asked of
  the broker once) is skipped and counted as dropped (``too_large``); the frames after it are published.
* kafka-python's idempotent producer does not survive an error it does not retry: it aborts every batch it
  still holds with that same error and refuses later sends. So the first such error in a producer is its
  frame's own; the frames failing after it in the same producer (its *generation*) are sent again with a new
  producer, in order, each at most ``MAX_SENDS`` times. A producer that cannot be built (the broker away) is
  built again with backoff until the camera stops.
* Counters always add up once the camera has stopped: ``captured = published + dropped + failed``. A frame
  is counted once: only the callback that finds it still in flight counts it.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Any

from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError, RecordListTooLargeError
from prometheus_client import Counter

from linewatch.contracts.kafka import make_producer, topic_max_message_bytes
from linewatch.contracts.messages import FrameMeta
from linewatch.contracts.settings import Settings

log = logging.getLogger(__name__)

PUBLISHED = Counter("linewatch_frames_published_total", "Frames acknowledged by Kafka", ["camera_id"])
DROPPED = Counter("linewatch_frames_dropped_total", "Frames dropped before Kafka, by reason (buffer_full: the "
                  "camera outran Kafka; too_large: over the producer's or the topic's size limit; unreadable: a "
                  "file removed or unreadable between listing and reading; stopped: still buffered when the camera "
                  "stopped with Kafka away)", ["camera_id", "reason"])
FAILED = Counter("linewatch_frames_publish_failed_total", "Frames Kafka did not acknowledge", ["camera_id"])
NEW_PRODUCERS = Counter("linewatch_camera_producer_rebuilds_total",
                        "Kafka producers rebuilt after an error that leaves the old one unusable", ["camera_id"])

RECORD_OVERHEAD_BYTES = 256  # a record's bytes beyond key, value and headers (record and batch framing)
MAX_SENDS = 3  # a frame failing for good this often (each time in a new producer) is counted as failed
_TOO_LARGE = (MessageSizeTooLargeError, RecordListTooLargeError)

Frame = tuple[FrameMeta, bytes]


class FramePublisher:
    """Sends frames of one camera and keeps its counters (see the module docstring).

    Args:
        settings: Kafka settings (topic, size limit, client options) are read from here.
        camera_id: the message key of every frame.
        counters: the camera's counters (``published``, ``dropped``, ``failed``, ``too_large``), updated under
            ``lock``, the camera's one lock.
        stop: set when the camera stops; producer rebuilds and backoffs end then.
        producer: a ready producer (tests); by default one is made from the settings.
    """

    def __init__(self, settings: Settings, camera_id: str, counters: Any, lock: threading.Lock,
                 stop: threading.Event, producer=None):
        self.settings = settings
        self.camera_id = camera_id
        self.key = camera_id.encode()
        self.counters = counters
        self.lock = lock
        self.stop = stop
        self.max_record_bytes = settings.kafka.max_message_bytes
        self.producer = producer or self._new_producer()
        self.generation = 0
        self.broken: set[int] = set()  # generations that had an error they do not survive
        self.in_flight: dict[tuple[int, int], Frame] = {}  # (generation, frame_id) -> frame, until answered
        self.sends: collections.Counter[int] = collections.Counter()  # frame_id -> sends so far
        self.resend: list[Frame] = []  # failed only because their producer had broken

    def learn_topic_limit(self) -> None:
        """Lower the size limit to the frames topic's ``max.message.bytes`` when the broker says it is lower."""
        topic = self.settings.kafka.frames_topic
        limit = topic_max_message_bytes(self.settings.kafka, topic)
        if limit is not None and limit < self.max_record_bytes:
            log.info("camera %s: topic %s takes records up to %d bytes; larger frames are skipped",
                     self.camera_id, topic, limit)
            self.max_record_bytes = limit

    @property
    def needs_new_producer(self) -> bool:
        return self.generation in self.broken

    def send(self, meta: FrameMeta, data: bytes) -> bool:
        """Hand one frame to the producer, or skip it when it is too large; False when it must be offered again
        (the producer is not taking frames now: buffer full, broker away, or broken and to be replaced)."""
        headers = meta.headers()
        size = len(self.key) + len(data) + sum(len(k) + len(v) for k, v in headers) + RECORD_OVERHEAD_BYTES
        generation = self.generation
        try:
            if size > self.max_record_bytes:
                raise MessageSizeTooLargeError(f"about {size} bytes with its headers; the limit is "
                                               f"{self.max_record_bytes} bytes")
            future = self.producer.send(self.settings.kafka.frames_topic, key=self.key, value=data, headers=headers)
        except _TOO_LARGE as exc:  # it can never be sent: skip it, and keep the line going
            self._count_too_large(meta, exc)
            return True
        except KafkaTimeoutError as exc:  # buffer full or metadata unavailable: offer it again, in order
            log.warning("camera %s: Kafka not accepting frames (%s); retrying", self.camera_id, exc)
            self.stop.wait(1.0)
            return False
        except KafkaError as exc:  # not retried by the client: a closed or fatally failed producer
            with self.lock:
                self.broken.add(generation)
                self.sends[meta.frame_id] += 1
                give_up = self.sends[meta.frame_id] >= MAX_SENDS
            log.error("camera %s: the producer refused frame %d (%s)", self.camera_id, meta.frame_id, exc)
            if give_up:
                with self.lock:
                    self.sends.pop(meta.frame_id, None)
                self._count_failed(meta, exc)
                return True
            self.stop.wait(min(5.0, 0.5 * self.sends[meta.frame_id]))
            return False
        with self.lock:
            self.in_flight[(generation, meta.frame_id)] = (meta, data)
            self.sends[meta.frame_id] += 1
        future.add_callback(self._acked, meta, generation).add_errback(self._failed, meta, generation)
        return True

    def replace_producer(self) -> list[Frame]:
        """Close the broken producer (its pending sends fail now) and build a new one, retrying with backoff until
        it is built or the camera stops; returns the frames to send again first, oldest first."""
        self._close(self.producer)
        with self.lock:  # frames the closed producer never answered for: sent again, not lost
            left = [key for key in self.in_flight if key[0] == self.generation]
            self.resend += [self.in_flight.pop(key) for key in left]
        backoff = 0.5
        while not self.stop.is_set():
            try:
                self.producer = self._new_producer()
                break
            except Exception as exc:  # noqa: BLE001 -- KafkaError or a bootstrap failure: the broker is away
                log.warning("camera %s: cannot build a producer (%s); again in %.1f s", self.camera_id, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        else:
            return []
        NEW_PRODUCERS.labels(self.camera_id).inc()
        with self.lock:
            self.generation += 1
            again, self.resend = sorted(self.resend, key=lambda f: f[0].frame_id), []
        if again:
            log.info("camera %s: sending %d frame(s) again with a new producer", self.camera_id, len(again))
        return again

    def settle(self) -> bool:
        """Wait for the answers to every send so far (up to 60 s); True when some frames must be sent again."""
        try:
            self.producer.flush(timeout=60)
        except KafkaError as exc:
            log.warning("camera %s: Kafka did not answer for every frame in time (%s)", self.camera_id, exc)
        with self.lock:
            return bool(self.resend)

    def close(self) -> None:
        """Close the producer and count as failed every frame not acknowledged by now."""
        self._close(self.producer)
        with self.lock:
            lost = len(self.in_flight) + len(self.resend)
            self.in_flight.clear()
            self.resend.clear()
            self.counters.failed += lost
        FAILED.labels(self.camera_id).inc(lost)

    def count_dropped(self, n: int, reason: str) -> None:
        with self.lock:
            self.counters.dropped += n
        DROPPED.labels(self.camera_id, reason).inc(n)

    # ---- callbacks (kafka-python's sender thread calls them as ``f(*args, value)``) ----------------------

    def _acked(self, meta: FrameMeta, generation: int, _metadata) -> None:
        with self.lock:
            if self.in_flight.pop((generation, meta.frame_id), None) is None:
                return  # already given up on and sent again: counted there
            self.counters.published += 1
            self.sends.pop(meta.frame_id, None)
        PUBLISHED.labels(self.camera_id).inc()

    def _failed(self, meta: FrameMeta, generation: int, exc: BaseException) -> None:
        with self.lock:
            frame = self.in_flight.pop((generation, meta.frame_id), None)
            if frame is None:
                return  # already given up on and sent again: counted there
            collateral = generation in self.broken  # its producer broke before, on another frame
            if not getattr(exc, "retriable", False):
                self.broken.add(generation)
            own_too_large = isinstance(exc, _TOO_LARGE) and not collateral
            if not own_too_large and generation in self.broken and self.sends[meta.frame_id] < MAX_SENDS:
                self.resend.append(frame)
                return
            self.sends.pop(meta.frame_id, None)
        if own_too_large:  # the broker's limit is lower than the topic config said
            self._count_too_large(meta, exc)
        else:
            self._count_failed(meta, exc)

    def _count_too_large(self, meta: FrameMeta, exc: BaseException) -> None:
        with self.lock:
            self.counters.dropped += 1
            self.counters.too_large += 1
        DROPPED.labels(self.camera_id, "too_large").inc()
        log.error("camera %s: frame %d dropped: too large (%s)", self.camera_id, meta.frame_id, exc)

    def _count_failed(self, meta: FrameMeta, exc: BaseException) -> None:
        with self.lock:
            self.counters.failed += 1
        FAILED.labels(self.camera_id).inc()
        log.error("camera %s: frame %d was not acknowledged by Kafka: %s", self.camera_id, meta.frame_id, exc)

    def _new_producer(self):
        return make_producer(self.settings.kafka, delivery_timeout_ms=600_000, max_block_ms=10_000)

    def _close(self, producer) -> None:
        for timeout in (10, 0):  # close() flushes first and raises when that times out; then force it
            try:
                producer.close(timeout=timeout)
                return
            except Exception as exc:  # noqa: BLE001 -- a broken producer may fail to close; it is dropped anyway
                log.debug("closing a producer: %s", exc)
