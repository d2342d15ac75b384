"""The real test services work: Kafka keeps acknowledged messages and committed offsets across a
restart, PostgreSQL keeps committed rows across a restart, Redis stores and returns values."""

from __future__ import annotations

import time

import crc32c
import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.record import util as record_util
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.services

TOPIC = "services-roundtrip"
PARTITIONS = 3
MESSAGES = [f"frame-{i:02d}".encode() for i in range(20)]


def _partition_of(index: int) -> int:
    return index % PARTITIONS


def _consume_all(consumer: KafkaConsumer, expected: int, timeout_s: float = 60.0) -> dict[int, list[bytes]]:
    """Poll until ``expected`` records arrived (or the timeout passed); their values by partition, in order."""
    values: dict[int, list[bytes]] = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + timeout_s
    while sum(map(len, values.values())) < expected and time.monotonic() < deadline:
        for tp, records in consumer.poll(timeout_ms=1000).items():
            values[tp.partition].extend(record.value for record in records)
    return values


def test_kafka_delivers_and_keeps_messages_across_restart(apache_kafka):
    # kafka-python checks record-batch CRCs with the C crc32c package when it is importable.
    assert record_util.crc32c_c is crc32c.crc32c
    assert record_util.calc_crc32c(memoryview(b"123456789")) == 0xE3069283  # the CRC-32C check value

    servers = apache_kafka.bootstrap_servers
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.create_topics({TOPIC: {"num_partitions": PARTITIONS, "replication_factor": 1}}, wait_for_metadata=True)
        [described] = admin.describe_topics([TOPIC])
        assert len(described["partitions"]) == PARTITIONS
    finally:
        admin.close()

    producer = KafkaProducer(bootstrap_servers=servers, acks="all")
    futures = [producer.send(TOPIC, value=value, partition=_partition_of(i)) for i, value in enumerate(MESSAGES)]
    acknowledged = [future.get(timeout=30) for future in futures]
    producer.close()
    assert [meta.partition for meta in acknowledged] == [_partition_of(i) for i in range(len(MESSAGES))]

    expected = {p: [v for i, v in enumerate(MESSAGES) if _partition_of(i) == p] for p in range(PARTITIONS)}
    partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    end_offsets = {tp: len(expected[tp.partition]) for tp in partitions}  # {0: 7, 1: 7, 2: 6}

    consumer = KafkaConsumer(TOPIC, bootstrap_servers=servers, group_id="services-test",
                             enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        assert _consume_all(consumer, len(MESSAGES)) == expected
        consumer.commit()
        assert consumer.end_offsets(partitions) == end_offsets
        assert {tp: consumer.committed(tp) for tp in partitions} == end_offsets
    finally:
        consumer.close()

    apache_kafka.restart()

    consumer = KafkaConsumer(TOPIC, bootstrap_servers=servers, group_id="services-test-after-restart",
                             enable_auto_commit=False, auto_offset_reset="earliest")
    try:
        assert _consume_all(consumer, len(MESSAGES)) == expected
    finally:
        consumer.close()
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        committed = admin.list_group_offsets({"services-test": partitions})["services-test"]
        assert {tp: meta.offset for tp, meta in committed.items()} == end_offsets
    finally:
        admin.close()


def test_postgres_keeps_committed_rows_across_restart(postgres_server):
    # pre_ping: the pooled connections die with the server on restart.
    engine = create_engine(postgres_server.url, pool_pre_ping=True)
    try:
        with engine.begin() as conn:
            assert conn.execute(text("SELECT current_user, current_database()")).one() == ("linewatch", "linewatch")
            # A table of this test's own: the session's database also holds linewatch's schema.
            conn.execute(text("CREATE TABLE service_check (id integer PRIMARY KEY, verdict text NOT NULL)"))
            conn.execute(text("INSERT INTO service_check VALUES (:id, :verdict)"),
                         [{"id": 1, "verdict": "ok"}, {"id": 2, "verdict": "anomaly"}])
        with engine.connect() as conn:
            assert conn.execute(text("SELECT id, verdict FROM service_check ORDER BY id")).all() == [
                (1, "ok"), (2, "anomaly")]

        postgres_server.restart()

        with engine.connect() as conn:
            assert conn.execute(text("SELECT id, verdict FROM service_check ORDER BY id")).all() == [
                (1, "ok"), (2, "anomaly")]
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS service_check"))
        engine.dispose()


def test_redis_stores_and_returns_values(redis_url):
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.ping() is True
        assert client.set("line:3:last_verdict", "anomaly") is True
        assert client.get("line:3:last_verdict") == b"anomaly"
        assert client.incr("line:3:frames", 5) == 5
    finally:
        client.close()


def test_kafka_accepts_messages_larger_than_the_default_1_mib(apache_kafka):
    servers = apache_kafka.bootstrap_servers
    admin = KafkaAdminClient(bootstrap_servers=servers)
    try:
        admin.create_topics({"services-large": {"num_partitions": 1, "replication_factor": 1}},
                            wait_for_metadata=True)
    finally:
        admin.close()
    frame = bytes(range(256)) * (12 * 1024 * 1024 // 256)  # 12 MiB: under the broker's 20 MiB limit

    producer = KafkaProducer(bootstrap_servers=servers, acks="all", max_request_size=20 * 1024 * 1024)
    assert producer.send("services-large", value=frame).get(timeout=60).offset == 0
    producer.close()

    consumer = KafkaConsumer("services-large", bootstrap_servers=servers, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=30_000)
    try:
        assert next(consumer).value == frame
    finally:
        consumer.close()
