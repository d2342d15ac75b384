"""A camera service: capture frames at a set rate and publish them to Kafka, losing none silently.

Two threads joined by a bounded buffer: capture (rate-limited) and publish (idempotent producer, acks=all).
When Kafka is slower than the camera, a live source drops its oldest buffered frames (counted); a file or
folder source waits instead, since it loses nothing by waiting.

A source that stops delivering (a stream down, a folder gone) is an *outage*: counted once when it is seen
(``reconnects``; a live stream is seen down after max(2 s, 3 of its frame periods) without a new frame), however
many reconnect attempts (exponential backoff) it takes; nothing is captured during it, and its length, from
the last frame before it to the first after it, is added to ``gap_s`` when it ends. A frame that cannot be read
while its source is there (a file removed between listing and reading) is captured and dropped (``unreadable``).

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

from prometheus_client import Counter, Gauge

from linewatch.contracts.messages import FrameMeta, check_id
from linewatch.contracts.products import check_product
from linewatch.contracts.settings import Settings

from .publisher import DROPPED, FramePublisher
from .sources import Capture, SourceError, UnreadableFrame

log = logging.getLogger(__name__)

CAPTURED = Counter("linewatch_frames_captured_total", "Frames captured", ["camera_id"])
RECONNECTS = Counter("linewatch_camera_reconnects_total", "Camera outages (source down, then reconnected), each "
                     "counted once however many reconnect attempts it took", ["camera_id"])
OUTAGE = Gauge("linewatch_camera_outage", "1 while the camera's source is down", ["camera_id"])
GAP = Counter("linewatch_camera_gap_seconds_total", "Seconds without frames in ended outages, from the last frame "
              "before each to the first after it", ["camera_id"])


@dataclass
class CameraCounters:
    """Per-camera counts: ``captured = published + dropped + failed`` once the camera has stopped. ``too_large``
    and ``unreadable`` count the frames among ``dropped`` that were over a size limit or could not be read;
    ``reconnects`` counts outages (one each, however many attempts); ``gap_s`` is the seconds without frames
    they lasted."""

    captured: int = 0
    published: int = 0
    dropped: int = 0
    failed: int = 0
    too_large: int = 0
    unreadable: int = 0
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
                 max_frames: int | None = None, producer=None, product: str | None = None):
        """``product``: the ``product`` header of every frame (docs/products.md); None: none (the workers take the
        camera's product from the changeover history).

        Raises:
            MessageError: (a ValueError) ``camera_id`` or ``line_id`` that no store could hold (too long, a
                NUL or another control character): every frame of it would be dead-lettered.
            ProductError: (a ValueError) ``product`` is not a product name.
        """
        check_id("camera_id", camera_id)
        check_id("line_id", line_id)
        self.product = check_product(product) if product else None
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
        self.last_frame_ns: int | None = None  # when the newest captured frame was taken
        self.outage_since_ns: int | None = None  # the last frame before the current outage (or its start)

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
        self.backoff = self.settings.ingest.reconnect_initial_s
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
                except UnreadableFrame as exc:
                    self._count_unreadable(exc)
                    continue
                except SourceError as exc:
                    if self.stop_event.is_set():
                        break  # a read cut short by the stop is no outage
                    self._reconnect(exc)
                    continue
                if capture is None:
                    break  # end of a file or folder
                taken_at_ns = capture.taken_at_ns or time.time_ns()
                if self.outage_since_ns is not None:
                    self._outage_over(taken_at_ns)
                self.last_frame_ns = taken_at_ns
                self._enqueue(capture, taken_at_ns)
        finally:
            if self.outage_since_ns is not None:  # stopped while the source was down: the gap so far
                self._outage_over(time.time_ns(), back=False)
            with self.cond:
                self.capture_done = True
                self.cond.notify_all()

    def _reconnect(self, exc: SourceError) -> None:
        """Count an outage when it starts, wait the backoff, try to reopen the source; the outage ends at the next
        frame, not at a successful open (a stream can open and still send nothing)."""
        if self.outage_since_ns is None:
            self.outage_since_ns = self.last_frame_ns or time.time_ns()
            with self.lock:
                self.counters.reconnects += 1
            RECONNECTS.labels(self.camera_id).inc()
            OUTAGE.labels(self.camera_id).set(1)
            log.warning("camera %s: source down: %s; reconnecting", self.camera_id, exc)
        else:
            log.info("camera %s: still down: %s; again in %.1f s", self.camera_id, exc, self.backoff)
        self.stop_event.wait(self.backoff)
        self.backoff = min(self.backoff * 2, self.settings.ingest.reconnect_max_s)
        try:
            self.source.open()
        except SourceError as again:
            log.info("camera %s: reconnect failed: %s", self.camera_id, again)

    def _outage_over(self, now_ns: int, back: bool = True) -> None:
        gap_s = max(0.0, (now_ns - self.outage_since_ns) / 1e9)  # type: ignore[operator]
        self.outage_since_ns = None
        self.backoff = self.settings.ingest.reconnect_initial_s
        with self.lock:
            self.counters.gap_s += gap_s
        GAP.labels(self.camera_id).inc(gap_s)
        OUTAGE.labels(self.camera_id).set(0)
        log.warning("camera %s: %s after %.1f s without frames", self.camera_id,
                    "source back" if back else "stopped while the source was down", gap_s)

    def _count_unreadable(self, exc: UnreadableFrame) -> None:
        with self.cond:
            self.counters.captured += 1
            self.counters.dropped += 1
            self.counters.unreadable += 1
        CAPTURED.labels(self.camera_id).inc()
        DROPPED.labels(self.camera_id, "unreadable").inc()
        log.error("camera %s: frame dropped: unreadable (%s)", self.camera_id, exc)

    def _enqueue(self, capture: Capture, taken_at_ns: int) -> None:
        meta = FrameMeta(self.camera_id, self.line_id, self.ids.next(), taken_at_ns, capture.content_type,
                         capture.part_id, self.product)
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
