"""The detector's consumer (GroupConsumer) on real Apache Kafka: it finishes every consumer-group join even when
it polls with ``timeout_ms=0`` as a busy worker does (kafka-python 3.0 abandons such joins, or replaces them with
new ones), and it reads on a partition paused with records buffered once it is resumed."""

from __future__ import annotations

import time
import uuid

import pytest
from kafka.structs import MemberState, TopicPartition

from linewatch.contracts.kafka import ensure_topics, make_consumer, make_producer
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
        if max(generations) < 2:
            # The broker did not start that second rebalance this time (it depends on when the topic's
            # metadata reaches the member): a second member joining and leaving starts two, just as abruptly.
            other = make_consumer(kafka, f"{kafka.topic_prefix}-detectors")
            other.subscribe([kafka.frames_topic])
            _poll_until_stable([consumer, other], 30)
            generations.add(consumer.group_metadata().generation_id)
            other.close()
        _poll_until_stable([consumer], 30)
        generations.add(consumer.group_metadata().generation_id)
        assert max(generations) >= 2  # a rebalance that used to be lost did happen
        assert consumer.group_metadata().state == MemberState.STABLE
        assert consumer.assignment() == {TopicPartition(kafka.frames_topic, p) for p in range(4)}
    finally:
        consumer.close()


def _poll_until_stable(consumers: list, seconds: float) -> None:
    """Poll each consumer with ``timeout_ms=0`` (as a busy worker does; GroupConsumer waits up to JOIN_POLL_MS
    while a join is in progress) until all are STABLE and own every partition between them, or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for c in consumers:
            c.poll(timeout_ms=0)
        if all(c.group_metadata().state == MemberState.STABLE for c in consumers) and \
                sum(len(c.assignment()) for c in consumers) == 4:
            return
        time.sleep(0.01)


def test_a_partition_paused_with_records_buffered_is_fetched_again_after_resume(apache_kafka):
    """A partition paused while the consumer holds fetched records of it (a worker's hold while its pipeline is
    full) is read on after resume. kafka-python 3.0 (up to 3.0.12 at least) parks those records and puts them
    back only while no drained record set sits in its in-line slot; once another partition's records were read
    to their end meanwhile, the paused one was never fetched again (see GroupConsumer)."""
    kafka = KafkaSettings(bootstrap_servers=apache_kafka.bootstrap_servers, topic_prefix=f"p{uuid.uuid4().hex[:8]}",
                          frames_partitions=2)
    ensure_topics(kafka)
    producer = make_producer(kafka)
    for partition in (0, 1):
        for i in range(10):
            producer.send(kafka.frames_topic, value=b"%d" % i, partition=partition)
    producer.flush()
    producer.close()
    consumer = make_consumer(kafka, None)
    parts = [TopicPartition(kafka.frames_topic, p) for p in (0, 1)]
    try:
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        read = {p: [] for p in parts}
        _read_until(consumer, read, lambda: any(read.values()), max_records=1)  # the rest of its set is buffered
        [first] = [tp for tp in parts if read[tp]]
        [other] = [tp for tp in parts if tp != first]
        consumer.pause(first)
        _read_until(consumer, read, lambda: len(read[other]) >= 10)  # the other partition's records, all of them
        consumer.resume(first)
        _read_until(consumer, read, lambda: len(read[first]) >= 10)
        assert read == {first: list(range(10)), other: list(range(10))}
    finally:
        consumer.close()


def _read_until(consumer, read: dict, done, max_records: int | None = None, seconds: float = 30) -> None:
    """Poll ``consumer`` and append each record's offset to ``read[partition]`` until ``done()`` or ``seconds``
    pass."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=500, max_records=max_records).items():
            read[tp] += [r.offset for r in records]
