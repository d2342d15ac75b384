"""Model rollout, the following side: a worker reads the active version announced on the compacted topic
``<prefix>.models`` (:mod:`linewatch.trainer.rollout` writes it) and is told of each newer one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kafka import TopicPartition

from linewatch.contracts.kafka import make_consumer
from linewatch.contracts.messages import ACTIVE_MODEL_KEY, ModelAnnouncement
from linewatch.contracts.settings import KafkaSettings

log = logging.getLogger(__name__)


class ActiveModelWatcher:
    """Follows the models topic from its beginning and calls ``on_change`` with each newer announcement.

    :meth:`read_current` returns the latest announcement already published (or None), reading until
    the topic has been quiet for ``settle_s`` (end offsets are not used: some brokers misreport them).
    """

    def __init__(self, kafka: KafkaSettings, on_change: Callable[[ModelAnnouncement], None]):
        self.kafka = kafka
        self.on_change = on_change
        self.current: ModelAnnouncement | None = None
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

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                latest = self._poll(1000)
            except Exception as exc:  # noqa: BLE001 -- the broker may be restarting; keep following
                log.warning("model watcher: %s", exc)
                self._stop.wait(2.0)
                continue
            if latest is not None and (self.current is None or latest.version != self.current.version):
                self.current = latest
                try:
                    self.on_change(latest)
                except Exception:  # noqa: BLE001 -- a bad model must not stop the watcher
                    log.exception("could not switch to model %s", latest.version)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close(autocommit=False)
