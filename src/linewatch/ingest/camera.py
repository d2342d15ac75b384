"""A camera service: capture frames at a set rate and publish them to Kafka, losing none silently.

Two threads joined by a bounded buffer: capture (rate-limited; reconnects a dropped camera with
exponential backoff and counts the gap) and publish (idempotent producer, acks=all). When Kafka
is slower than the camera, a live source drops its oldest buffered frames (counted); a file or
folder source waits instead, since it loses nothing by waiting.

No single frame stops the camera: see :mod:`.publisher` for oversize frames and producer errors. At the
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

from prometheus_client import Counter

from linewatch.contracts.messages import FrameMeta, check_id
from linewatch.contracts.settings import Settings

from .publisher import DROPPED, FramePublisher
from .sources import Capture, SourceError

log = logging.getLogger(__name__)

CAPTURED = Counter("linewatch_frames_captured_total", "Frames captured", ["camera_id"])
RECONNECTS = Counter("linewatch_camera_reconnects_total", "Camera reconnections", ["camera_id"])


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
        self.lock = threading.Lock()  # the one lock of the counters and the buffer
        self.cond = threading.Condition(self.lock)
        self.capture_done = False
        self.stop_event = threading.Event()
        self.publisher = FramePublisher(settings, camera_id, self.counters, self.lock, self.stop_event, producer)
        self.ids = FrameIds()

    def stop(self) -> None:
        self.stop_event.set()
        with self.cond:
            self.cond.notify_all()

    def run(self, install_signal_handlers: bool = True) -> CameraCounters:
        """Capture and publish until done; flushes Kafka before returning the counters."""
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.stop())
        self.publisher.learn_topic_limit()
        capture = threading.Thread(target=self._capture_loop, name="capture", daemon=True)
        reporter = threading.Thread(target=self._report_loop, name="report", daemon=True)
        capture.start()
        reporter.start()
        try:
            self._publish_loop()
        finally:
            self.stop_event.set()
            capture.join(timeout=10)
            self.publisher.settle()
            self.publisher.close()  # what Kafka has not acknowledged by now is counted as failed
            with self.cond:  # still buffered: the camera stopped while Kafka was away
                left, self.buffer = len(self.buffer), collections.deque()
            if left:
                self.publisher.count_dropped(left, "stopped")
            self.source.close()
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
                DROPPED.labels(self.camera_id, "buffer_full").inc()  # under self.lock, via self.cond
            self.buffer.append((meta, capture.data))
            self.counters.captured += 1
            CAPTURED.labels(self.camera_id).inc()
            self.cond.notify_all()

    # ---- publish --------------------------------------------------------------------------------------

    def _publish_loop(self) -> None:
        """Offer the buffered frames to the publisher in order, replacing its producer when it broke."""
        while True:
            with self.cond:
                while not self.buffer and not self.capture_done and not self.stop_event.is_set():
                    self.cond.wait(0.5)
                head = self.buffer[0] if self.buffer else None
            if head is None:  # all captured frames sent: wait for their answers, which may ask for resends
                if self.stop_event.is_set() or not self.publisher.settle():
                    return
            if self.publisher.needs_new_producer or head is None:
                again = self.publisher.replace_producer()
                with self.cond:
                    self.buffer.extendleft(reversed(again))  # oldest first, ahead of the frames not yet sent
                continue
            if self.publisher.send(*head):
                with self.cond:
                    self.buffer.popleft()
                    self.cond.notify_all()
            elif self.stop_event.is_set():
                return  # Kafka away at the stop: what is buffered is counted as dropped by run()

    def _report_loop(self) -> None:
        while not self.stop_event.wait(10.0):
            log.info("camera %s: %s", self.camera_id, json.dumps(asdict(self.counters)))
