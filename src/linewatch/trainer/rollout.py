"""Model rollout, the announcing side: the trainer (and ``linewatch model activate``) publish the active
version on the compacted Kafka topic ``<prefix>.models``; :mod:`linewatch.detector.stream.rollout` follows it.

Why Kafka and not Redis pub/sub: the announcement must reach every worker, including one that is
restarting or reconnecting at that moment, and a worker that starts later must find the active
version. Pub/sub delivers only to subscribers connected at that instant; a compacted topic keeps the
latest announcement (key ``active``) for as long as the topic exists, in order, with the same
delivery guarantees as the frames. SQL (table ``models``) stays the record; the topic is the signal.
"""

from __future__ import annotations

import time

from linewatch.contracts.kafka import make_consumer, make_producer
from linewatch.contracts.messages import ACTIVE_MODEL_KEY, ModelAnnouncement
from linewatch.contracts.settings import KafkaSettings


def announce(kafka: KafkaSettings, announcement: ModelAnnouncement) -> None:
    """Publish the active version (waits for the broker's acknowledgement; raises KafkaError on failure)."""
    producer = make_producer(kafka)
    try:
        value = announcement.model_dump_json().encode()
        producer.send(kafka.models_topic, key=ACTIVE_MODEL_KEY, value=value).get(timeout=30)
    finally:
        producer.close(timeout=10)


def current_announcement(kafka: KafkaSettings, timeout_s: float = 10.0) -> ModelAnnouncement | None:
    """The latest announcement on the models topic (what a worker starting now would load), or None when the
    topic holds none. Reads partition 0 from its beginning up to its end offset as of the call (a compacted
    topic: a handful of records). A malformed record is skipped, as the workers skip it.

    Raises:
        KafkaError: the broker cannot be reached. TimeoutError: the end was not reached in ``timeout_s`` seconds.
    """
    from kafka import TopicPartition

    tp = TopicPartition(kafka.models_topic, 0)
    consumer = make_consumer(kafka, None, enable_auto_commit=False)
    latest, deadline = None, time.monotonic() + timeout_s
    try:
        consumer.assign([tp])
        consumer.seek_to_beginning()
        end = consumer.end_offsets([tp])[tp]
        while consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the models topic was not read to its end ({end}) in {timeout_s:g} s")
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    if record.key == ACTIVE_MODEL_KEY and record.value is not None:
                        try:
                            latest = ModelAnnouncement.model_validate_json(record.value)
                        except ValueError:
                            continue
    finally:
        consumer.close(autocommit=False)
    return latest
