"""Model rollout, the following side: a worker reads the active version of every product announced on the
compacted topic ``<prefix>.models`` (:mod:`linewatch.trainer.rollout` writes it: key ``active`` for the default
product, ``active/<product>`` for the others) and is told of each newer one.

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
    """Follows the models topic from its beginning and calls ``on_change`` with each newer announcement, per product.

    :meth:`read_current` returns the latest announcement of every product already published, reading until the
    topic has been quiet for ``settle_s`` (end offsets are not used: some brokers misreport them). When
    ``on_change`` raises (the model cannot be loaded), the same announcement is offered again after ``retry_s[0]``
    seconds, the delay doubling up to ``retry_s[1]``, until it succeeds or a newer one of that product arrives; other
    products' announcements are offered meanwhile.
    """

    def __init__(self, kafka: KafkaSettings, on_change: Callable[[ModelAnnouncement], None],
                 retry_s: tuple[float, float] = (RETRY_FIRST_S, RETRY_MAX_S)):
        self.kafka = kafka
        self.on_change = on_change
        self.current: dict[str, ModelAnnouncement] = {}  # product -> latest announcement
        self.retry_s = retry_s
        self._pending: dict[str, tuple[ModelAnnouncement, float, float]] = {}  # product -> (a, retry at, delay)
        self._stop = threading.Event()
        self._consumer = make_consumer(kafka, None, enable_auto_commit=False)
        self._consumer.assign([TopicPartition(kafka.models_topic, 0)])
        self._consumer.seek_to_beginning()
        self._thread: threading.Thread | None = None

    def _poll(self, timeout_ms: int) -> dict[str, ModelAnnouncement]:
        latest: dict[str, ModelAnnouncement] = {}
        for records in self._consumer.poll(timeout_ms=timeout_ms).values():
            for record in records:
                key = record.key or b""
                if not (key == ACTIVE_MODEL_KEY or key.startswith(ACTIVE_MODEL_KEY + b"/")) or record.value is None:
                    continue  # another kind of record (a tombstone, or a key this release does not follow)
                try:
                    a = ModelAnnouncement.model_validate_json(record.value)
                    if a.key != key:
                        raise ValueError(f"it names product {a.product!r} under the key {key!r}")
                except ValueError as exc:
                    log.error("ignoring malformed model announcement at offset %d: %s", record.offset, exc)
                    continue
                latest[a.product] = a
        return latest

    def read_current(self, settle_s: float = 1.5) -> dict[str, ModelAnnouncement]:
        """Read everything published so far; returns the latest announcement of each product (maybe none)."""
        while True:
            latest = self._poll(int(settle_s * 1000))
            if not latest:
                return dict(self.current)
            self.current.update(latest)

    def start(self) -> None:
        """Follow new announcements in a daemon thread."""
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def retry(self, announcement: ModelAnnouncement) -> None:
        """Offer ``announcement`` again from the watcher's thread, with backoff (for a version the worker could
        not load at start). Call before :meth:`start`."""
        self._pending[announcement.product] = (announcement, time.monotonic() + self.retry_s[0], self.retry_s[0])

    def _run(self) -> None:
        while not self._stop.is_set():
            due = min((at for _, at, _ in self._pending.values()), default=None)
            wait_s = 1.0 if due is None else min(1.0, max(0.0, due - time.monotonic()))
            try:
                latest = self._poll(int(wait_s * 1000))
            except Exception as exc:  # noqa: BLE001 -- the broker may be restarting; keep following
                log.warning("model watcher: %s", exc)
                self._stop.wait(2.0)
                continue
            for product, a in latest.items():
                known = self.current.get(product)
                if known is None or a.version != known.version:
                    self.current[product] = a
                    self._pending[product] = (a, 0.0, self.retry_s[0])
            for product, (a, at, delay) in list(self._pending.items()):
                if time.monotonic() >= at:
                    self._offer(product, a, delay)

    def _offer(self, product: str, announcement: ModelAnnouncement, delay: float) -> None:
        try:
            self.on_change(announcement)
        except Exception as exc:  # noqa: BLE001 -- a bad model must not stop the watcher; tried again later
            log.warning("could not load model %s (%s); trying again in %.0f s", announcement.version,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__, delay)
            self._pending[product] = (announcement, time.monotonic() + delay, min(delay * 2, self.retry_s[1]))
            return
        if self._pending.get(product, (None,))[0] is announcement:
            del self._pending[product]

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close(autocommit=False)
