"""A camera never stalls on one frame (field case c12): a frame over the producer's or the topic's size limit
is skipped and counted as ``too_large``, the frames after it are published in order, and the counters add up
(captured = published + dropped + failed). Runs on real Apache Kafka with the topic at its default 1 MiB."""

from __future__ import annotations

import pytest
from kafka import KafkaConsumer
from kafka.admin import KafkaAdminClient, NewTopic

from linewatch.contracts import kafka as kafka_contract
from linewatch.contracts.kafka import ensure_topics, topic_max_message_bytes
from linewatch.contracts.messages import MessageError
from linewatch.contracts.settings import Settings
from linewatch.ingest import camera as camera_module
from linewatch.ingest import publisher as publisher_module
from linewatch.ingest.camera import CameraService
from linewatch.ingest.sources import open_source

from datasets import field_case

MiB = 1024 * 1024
KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588
FILES = ["01_small.jpg", "02_big_1633055B.jpg", "03_small.jpg", "04_small.jpg"]


def _settings(kafka, prefix: str, limit: int) -> Settings:
    return Settings(kafka={"bootstrap_servers": kafka.bootstrap_servers, "topic_prefix": prefix,
                           "max_message_bytes": limit, "frames_partitions": 1})


def _published_part_ids(settings: Settings, expected: int) -> list[str]:
    consumer = KafkaConsumer(settings.kafka.frames_topic, bootstrap_servers=settings.kafka.bootstrap_servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=30000, max_partition_fetch_bytes=8 * MiB)
    parts = []
    for record in consumer:
        parts.append(dict(record.headers)["part_id"].decode())
        if len(parts) >= expected:
            break
    consumer.close()
    return parts


def _run_camera(settings: Settings) -> camera_module.CameraCounters:
    service = CameraService(settings, "cam-c12", "line-1", open_source(str(field_case("c12_oversize_frame"))))
    return service.run(install_signal_handlers=False)


def _default_sized_topic(settings: Settings) -> None:
    """The frames topic at Apache Kafka's default size limit (max.message.bytes 1048588; the test broker's own
    default is raised for the other tests), then the other topics."""
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka.bootstrap_servers)
    admin.create_topics([NewTopic(settings.kafka.frames_topic, 1, 1,
                                  topic_configs={"max.message.bytes": str(KAFKA_DEFAULT_MAX_MESSAGE_BYTES)})])
    admin.close()
    ensure_topics(settings.kafka)


@pytest.mark.services
def test_c12_over_the_producer_limit_is_skipped_and_the_next_frames_published(apache_kafka):
    settings = _settings(apache_kafka, "c12a", 1 * MiB)
    ensure_topics(settings.kafka)
    counters = _run_camera(settings)
    assert (counters.captured, counters.published, counters.dropped, counters.too_large, counters.failed) == \
        (4, 3, 1, 1, 0)
    assert _published_part_ids(settings, 3) == ["01_small.jpg", "03_small.jpg", "04_small.jpg"]


@pytest.mark.services
def test_c12_over_the_topic_limit_is_skipped_and_the_next_frames_published(apache_kafka):
    settings = _settings(apache_kafka, "c12b", 4 * MiB)
    _default_sized_topic(settings)
    assert topic_max_message_bytes(settings.kafka, settings.kafka.frames_topic) == KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    counters = _run_camera(settings)
    assert (counters.captured, counters.published, counters.dropped, counters.too_large, counters.failed) == \
        (4, 3, 1, 1, 0)
    assert _published_part_ids(settings, 3) == ["01_small.jpg", "03_small.jpg", "04_small.jpg"]


@pytest.mark.services
def test_c12_a_broker_rejection_rebuilds_the_producer_and_loses_no_frame(apache_kafka, monkeypatch):
    """When the topic's limit cannot be read, the broker's rejection is the signal: the idempotent producer is
    left in a fatal state, the camera builds a new one and sends again the frames that failed with it."""
    settings = _settings(apache_kafka, "c12c", 4 * MiB)
    _default_sized_topic(settings)
    monkeypatch.setattr(publisher_module, "topic_max_message_bytes", lambda *_a, **_k: None)
    rebuilt = publisher_module.NEW_PRODUCERS.labels("cam-c12")._value.get()
    counters = _run_camera(settings)
    assert (counters.captured, counters.published, counters.dropped, counters.too_large, counters.failed) == \
        (4, 3, 1, 1, 0)
    assert publisher_module.NEW_PRODUCERS.labels("cam-c12")._value.get() >= rebuilt + 1
    assert _published_part_ids(settings, 3) == ["01_small.jpg", "03_small.jpg", "04_small.jpg"]


@pytest.mark.parametrize(("camera_id", "line_id", "says"), [
    ("cam-1\x00", "L1", "camera_id"),
    ("cam-1", "L" * 129, "line_id"),
    ("", "L1", "camera_id"),
])
def test_ingest_refuses_ids_no_store_can_hold(camera_id, line_id, says):
    with pytest.raises(MessageError, match=says):
        CameraService(Settings(), camera_id, line_id, source=None, producer=object())


def test_the_topic_limit_is_none_when_the_broker_cannot_be_asked():
    settings = Settings(kafka={"bootstrap_servers": "127.0.0.1:9"})  # nothing listens there
    assert kafka_contract.topic_max_message_bytes(settings.kafka, "x", timeout_s=2) is None
