"""Draining a live video source: a reader thread keeps only the newest frame, stamped with the time it arrived.

OpenCV's capture queues what the source sends (FFmpeg's and V4L2's buffers); a camera that reads it more slowly
than the source sends (``--fps 3`` from a 10 frames/s stream) falls further behind with every read: frame age
grew to 35 s in the field. So one thread per open source reads every frame as it comes (``grab`` + ``retrieve``:
FFmpeg decodes in ``grab`` anyway, ``retrieve`` adds the colour conversion) and keeps the newest; the camera's
capture loop takes it at its own rate. Each reader owns its ``cv2.VideoCapture`` and releases it itself, so a
reader stuck in a blocking read of a dead stream can be abandoned (a reconnect opens a new one) without a second
thread ever touching its capture.
"""

from __future__ import annotations

import collections
import statistics
import threading
import time

import cv2
import numpy as np

STALL_MIN_S = 2.0  # no new frame for max(this, STALL_PERIODS source frame periods): the source is down
STALL_PERIODS = 3


class SourceDown(RuntimeError):
    """The live source stopped delivering: the stream ended, or no new frame came within :attr:`stall_s`."""


class LatestFrame:
    """Reads ``cap`` in a daemon thread from construction on, keeping the newest frame.

    Args:
        cap: an opened ``cv2.VideoCapture``; this object owns it from now on and releases it.
        name: the source, for the thread's name and error messages.
    """

    def __init__(self, cap: cv2.VideoCapture, name: str):
        self.cap = cap
        self.name = name
        self.cond = threading.Condition()
        self.frame: np.ndarray | None = None  # (H, W, 3) uint8 BGR, the newest frame
        self.taken_at_ns = 0  # time.time_ns() when the newest frame arrived
        self.seq = 0  # frames read so far
        self.arrived = time.monotonic()  # monotonic time of the newest frame (or of the open)
        self.intervals: collections.deque[float] = collections.deque(maxlen=30)  # between arrivals, s
        self.ended: str | None = None
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=f"read {name}", daemon=True)
        self.thread.start()

    @property
    def stall_s(self) -> float:
        """Seconds without a new frame after which the source counts as down: max(2 s, 3 frame periods), the
        period being the median interval between the last 30 frames' arrivals (2 s until two have come)."""
        with self.cond:
            period = statistics.median(self.intervals) if self.intervals else 0.0
        return max(STALL_MIN_S, STALL_PERIODS * period)

    def take(self, after_seq: int) -> tuple[int, np.ndarray, int]:
        """The newest frame if it is newer than frame ``after_seq``, else the next one to arrive.

        Returns:
            (seq, frame, taken_at_ns): the frame's number (1, 2, ...), its (H, W, 3) uint8 BGR pixels and the
            wall time (``time.time_ns()``) at which it arrived.
        Raises:
            SourceDown: the stream ended, or no new frame arrived within :attr:`stall_s` of the last one.
        """
        stall_s = self.stall_s
        with self.cond:
            while self.seq <= after_seq:
                if self.ended is not None:
                    raise SourceDown(f"video source {self.name!r} {self.ended}")
                left = self.arrived + stall_s - time.monotonic()
                if left <= 0:
                    raise SourceDown(f"video source {self.name!r}: no new frame for {stall_s:.1f} s")
                self.cond.wait(left)
            assert self.frame is not None
            return self.seq, self.frame, self.taken_at_ns

    def stop(self) -> None:
        """Ask the thread to end; it releases the capture once its current read returns."""
        with self.cond:
            self.stopping = True

    def _run(self) -> None:
        try:
            while not self.stopping:
                ok = self.cap.grab()
                taken_at_ns, arrived = time.time_ns(), time.monotonic()
                frame = self.cap.retrieve()[1] if ok else None
                with self.cond:
                    if frame is None:
                        self.ended = "returned no frame (stream ended or disconnected)"
                        self.cond.notify_all()
                        return
                    if self.seq:
                        self.intervals.append(arrived - self.arrived)
                    self.frame, self.taken_at_ns, self.arrived = frame, taken_at_ns, arrived
                    self.seq += 1
                    self.cond.notify_all()
        except cv2.error as exc:  # a backend error ends this reader; the camera reconnects
            with self.cond:
                self.ended = f"failed: {exc}"
                self.cond.notify_all()
        finally:
            self.cap.release()
