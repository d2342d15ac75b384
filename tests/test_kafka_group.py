"""The detector's consumer finishes every consumer-group join on real Apache Kafka, even when it polls
with ``timeout_ms=0`` as a busy worker does (kafka-python 3.0 abandons such joins; see GroupConsumer)."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka.structs import MemberState, TopicPartition

from linewatch.contracts.kafka import ensure_topics, make_consumer
from linewatch.contracts.settings import KafkaSettings

pytestmark = pytest.mark.services


@pytest.mark.parametrize("attempt", range(2))
def test_a_consumer_polling_without_waiting_ends_every_rebalance_assigned(apache_kafka, attempt):
    kafka = KafkaSettings(bootstrap_servers=apache_kafka.bootstrap_servers, topic_prefix=f"g{uuid.uuid4().hex[:8]}",
                          frames_partitions=4, session_timeout_ms=6000, heartbeat_interval_ms=1000)
    ensure_topics(kafka)
    consumer = make_consumer(kafka, f"{kafka.topic_prefix}-detectors")
    try:
        while not consumer.partitions_for_topic(kafka.frames_topic):
            time.sleep(0.2)
        consumer.subscribe([kafka.frames_topic])
        # The first member's join is followed by a second, metadata-triggered rebalance within a few
        # seconds; without the fix a zero-timeout poll loses it in most attempts.
        generations = set()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            consumer.poll(timeout_ms=0)
            generations.add(consumer.group_metadata().generation_id)
        stable_by = time.monotonic() + 10
        while consumer.group_metadata().state != MemberState.STABLE and time.monotonic() < stable_by:
            consumer.poll(timeout_ms=0)
        assert max(generations) >= 2  # the rebalance that used to be lost did happen
        assert consumer.group_metadata().state == MemberState.STABLE
        assert consumer.assignment() == {TopicPartition(kafka.frames_topic, p) for p in range(4)}
    finally:
        consumer.close()
