"""Model rollout, the following side: a worker reads the active version announced on the compacted topic
``<prefix>.models`` (:mod:`linewatch.trainer.rollout` writes it) and is told of each newer one.

A version whose files cannot be loaded yet (still being copied, cut short, checksum mismatch) is tried again with
backoff until it loads or another version is announced; meanwhile the worker scores with the model it has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from kafka import TopicPartition

from linewatch.contracts.kafka import make_consumer
from linewatch.contracts.messages import ACTIVE_MODEL_KEY, ModelAnnouncement
from linewatch.contracts.settings import KafkaSettings

log = logging.getLogger(__name__)


# Retry delays after a failed load, seconds: the first, doubled after each failure up to the last.
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0


class ActiveModelWatcher:
    """Follows the models topic from its beginning and calls ``on_change`` with each newer announcement.

    :meth:`read_current` returns the latest announcement already published (or None), reading until
    the topic has been quiet for ``settle_s`` (end offsets are not used: some brokers misreport them).
    When ``on_change`` raises (the model cannot be loaded), the same announcement is offered again after
    ``retry_s[0]`` seconds, the delay doubling up to ``retry_s[1]``, until it succeeds or a newer one arrives.
    """

    def __init__(self, kafka: KafkaSettings, on_change: Callable[[ModelAnnouncement], None],
                 retry_s: tuple[float, float] = (RETRY_FIRST_S, RETRY_MAX_S)):
        self.kafka = kafka
        self.on_change = on_change
        self.current: ModelAnnouncement | None = None
        self.retry_s = retry_s
        self._pending: ModelAnnouncement | None = None  # announced, not loaded yet
        self._retry_at = 0.0  # time.monotonic() of the next attempt
        self._delay = retry_s[0]
        self._stop = threading.Event()
        self._consumer = make_consumer(kafka, None, enable_auto_commit=False)
        self._consumer.assign([TopicPartition(kafka.models_topic, 0)])
        self._consumer.seek_to_beginning()
        self._thread: threading.Thread | None = None

    def _poll(self, timeout_ms: int) -> ModelAnnouncement | None:
        latest = None
        for records in self._consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                if record.key != ACTIVE_MODEL_KEY or record.value is None:
                    continue
                try:
                    latest = ModelAnnouncement.model_validate_json(record.value)
                except ValueError as exc:
                    log.error("ignoring malformed model announcement at offset %d: %s", record.offset, exc)
        return latest

    def read_current(self, settle_s: float = 1.5) -> ModelAnnouncement | None:
        """Read everything published so far; returns the latest announcement, or None if there is none."""
        while True:
            latest = self._poll(int(settle_s * 1000))
            if latest is None:
                return self.current
            self.current = latest

    def start(self) -> None:
        """Follow new announcements in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def retry(self, announcement: ModelAnnouncement) -> None:
        """Offer ``announcement`` again from the watcher's thread, with backoff (for a version the worker could
        not load at start). Call before :meth:`start`."""
        self._pending, self._retry_at, self._delay = announcement, time.monotonic() + self.retry_s[0], self.retry_s[0]

    def _run(self) -> None:
        while not self._stop.is_set():
            wait_s = 1.0 if self._pending is None else min(1.0, max(0.0, self._retry_at - time.monotonic()))
            try:
                latest = self._poll(int(wait_s * 1000))
            except Exception as exc:  # noqa: BLE001 -- the broker may be restarting; keep following
                log.warning("model watcher: %s", exc)
                self._stop.wait(2.0)
                continue
            if latest is not None and (self.current is None or latest.version != self.current.version):
                self.current = self._pending = latest
                self._retry_at, self._delay = 0.0, self.retry_s[0]
            if self._pending is not None and time.monotonic() >= self._retry_at:
                self._offer(self._pending)

    def _offer(self, announcement: ModelAnnouncement) -> None:
        try:
            self.on_change(announcement)
        except Exception as exc:  # noqa: BLE001 -- a bad model must not stop the watcher; tried again later
            log.warning("could not load model %s (%s); trying again in %.0f s", announcement.version,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__, self._delay)
            self._retry_at = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, self.retry_s[1])
            return
        self._pending = None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close(autocommit=False)
