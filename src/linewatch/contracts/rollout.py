"""Model rollout: the active model version is announced on the compacted Kafka topic ``<prefix>.models``.

Why Kafka and not Redis pub/sub: the announcement must reach every worker, including one that is
restarting or reconnecting at that moment, and a worker that starts later must find the active
version. Pub/sub delivers only to subscribers connected at that instant; a compacted topic keeps the
latest announcement (key ``active``) for as long as the topic exists, in order, with the same
delivery guarantees as the frames. SQL (table ``models``) stays the record; the topic is the signal.

Message: key ``active``; value JSON of :class:`ModelAnnouncement`.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable

from kafka import TopicPartition
from pydantic import BaseModel

from .kafka import make_consumer, make_producer
from .settings import KafkaSettings

log = logging.getLogger(__name__)

KEY = b"active"


class ModelAnnouncement(BaseModel):
    """The model version every worker should score with, and where its files are."""

    version: str
    artifact_uri: str
    activated_at: dt.datetime
    activated_by: str | None = None


def announce(kafka: KafkaSettings, announcement: ModelAnnouncement) -> None:
    """Publish the active version (waits for the broker's acknowledgement; raises KafkaError on failure)."""
    producer = make_producer(kafka)
    try:
        producer.send(kafka.models_topic, key=KEY, value=announcement.model_dump_json().encode()).get(timeout=30)
    finally:
        producer.close(timeout=10)


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
                if record.key != KEY or record.value is None:
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
