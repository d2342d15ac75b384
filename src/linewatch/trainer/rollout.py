"""Model rollout, the announcing side: the trainer (and ``linewatch model activate``) publish the active
version on the compacted Kafka topic ``<prefix>.models``; :mod:`linewatch.detector.stream.rollout` follows it.

Why Kafka and not Redis pub/sub: the announcement must reach every worker, including one that is
restarting or reconnecting at that moment, and a worker that starts later must find the active
version. Pub/sub delivers only to subscribers connected at that instant; a compacted topic keeps the
latest announcement of each product (key ``active`` for the default product, ``active/<product>`` for the others:
:func:`~linewatch.contracts.messages.announcement_key`) for as long as the topic exists, in order, with the same
delivery guarantees as the frames. SQL (table ``models``) stays the record; the topic is the signal.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from kafka.errors import KafkaError

from linewatch.contracts.kafka import make_consumer, make_producer
from linewatch.contracts.messages import ModelAnnouncement, announcement_key
from linewatch.contracts.products import DEFAULT_PRODUCT
from linewatch.contracts.settings import KafkaSettings
from linewatch.contracts.trainer_settings import TrainerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnounceRetry:
    """How hard an activation is announced before it is given up (``trainer.announce_*`` settings): ``attempts``
    tries, each waiting up to ``timeout_s`` seconds for the broker (metadata, then the acknowledgement), with
    ``backoff_s`` seconds before the second try, doubling before each further one."""

    attempts: int = 3
    backoff_s: float = 2.0
    timeout_s: float = 20.0

    @classmethod
    def from_settings(cls, trainer: TrainerSettings) -> AnnounceRetry:
        return cls(trainer.announce_attempts, trainer.announce_backoff_s, trainer.announce_timeout_s)


def announce(kafka: KafkaSettings, announcement: ModelAnnouncement, timeout_s: float = 30.0) -> None:
    """Publish the active version of ``announcement.product`` once, under that product's key, waiting up to
    ``timeout_s`` seconds for the topic's metadata and again for the broker's acknowledgement (acks=all).

    Raises:
        KafkaError: the broker cannot be reached (``NoBrokersAvailable``), the topic does not exist or the send was
            not acknowledged in time (``KafkaTimeoutError``), or the broker refused the record.
    """
    wait_ms = max(1000, int(timeout_s * 1000))
    request_ms = min(30_000, wait_ms)
    producer = make_producer(kafka, max_block_ms=wait_ms, request_timeout_ms=request_ms,
                             delivery_timeout_ms=request_ms + 1000)
    try:
        value = announcement.model_dump_json().encode()
        producer.send(kafka.models_topic, key=announcement.key, value=value).get(timeout=timeout_s)
    finally:
        producer.close(timeout=min(10.0, timeout_s))


def announce_with_retries(kafka: KafkaSettings, announcement: ModelAnnouncement, retry: AnnounceRetry) -> int:
    """:func:`announce`, tried up to ``retry.attempts`` times with a doubling backoff; returns the attempt that
    succeeded (1 = the first). A retried announcement is harmless: the topic is compacted on the product's key, and
    a worker already on the announced version ignores it.

    Raises:
        KafkaError: the last attempt's error, after every attempt failed (each one is logged).
    """
    for attempt in range(1, retry.attempts + 1):
        try:
            announce(kafka, announcement, retry.timeout_s)
            if attempt > 1:
                log.warning("announcing %s succeeded at attempt %d of %d", announcement.version, attempt,
                            retry.attempts)
            return attempt
        except KafkaError as exc:
            if attempt == retry.attempts:
                raise
            wait = retry.backoff_s * 2 ** (attempt - 1)
            log.warning("announcing %s on %s failed (attempt %d of %d: %s: %s); trying again in %.1f s",
                        announcement.version, kafka.models_topic, attempt, retry.attempts, type(exc).__name__,
                        exc, wait)
            time.sleep(wait)
    raise AssertionError("unreachable: attempts >= 1")


def current_announcement(kafka: KafkaSettings, timeout_s: float = 10.0,
                         product: str = DEFAULT_PRODUCT) -> ModelAnnouncement | None:
    """The latest announcement of ``product`` on the models topic (what a worker starting now would load for it), or
    None when the topic holds none. Reads partition 0 from its beginning up to its end offset as of the call (a
    compacted topic: a handful of records per product). A malformed record is skipped, as the workers skip it.

    Raises:
        KafkaError: the broker cannot be reached (``KafkaTimeoutError`` after ``timeout_s`` seconds when none answers
            the bootstrap). TimeoutError: the end was not reached within ``timeout_s`` seconds of the call.
    """
    from kafka import TopicPartition

    key = announcement_key(product)
    tp = TopicPartition(kafka.models_topic, 0)
    latest, deadline = None, time.monotonic() + timeout_s
    # kafka-python's bootstrap waits 30 s for a broker by default: a broker that is gone is told within timeout_s.
    # (When it gives up, kafka-python 3.0 leaves the consumer's I/O thread behind: one daemon thread a failed call.)
    consumer = make_consumer(kafka, None, enable_auto_commit=False,
                             bootstrap_timeout_ms=max(1, round(timeout_s * 1000)))
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning()
        end = consumer.end_offsets([tp])[tp]
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the models topic was not read to its end ({end}) in {timeout_s:g} s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key == key and record.value is not None:
                        try:
                            latest = ModelAnnouncement.model_validate_json(record.value)
                        except ValueError:
                            continue
    finally:
        consumer.close(autocommit=False)
    return latest
