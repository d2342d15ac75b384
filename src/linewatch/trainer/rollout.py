"""Model rollout, the announcing side: the trainer (and ``linewatch model activate``) publish the active
version on the compacted Kafka topic ``<prefix>.models``; :mod:`linewatch.detector.stream.rollout` follows it.

Why Kafka and not Redis pub/sub: the announcement must reach every worker, including one that is
restarting or reconnecting at that moment, and a worker that starts later must find the active
version. Pub/sub delivers only to subscribers connected at that instant; a compacted topic keeps the
latest announcement (key ``active``) for as long as the topic exists, in order, with the same
delivery guarantees as the frames. SQL (table ``models``) stays the record; the topic is the signal.
"""

from __future__ import annotations

from linewatch.contracts.kafka import make_producer
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
