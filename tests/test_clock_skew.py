"""Camera clocks that are off never freeze or skew the live view (field case c20), through a real worker on
Apache Kafka, PostgreSQL and Redis: counts follow the workers' clock, latency is never negative, the skew is
counted per camera, and every per-camera key expires."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from kafka import KafkaConsumer
from sqlalchemy import text

from linewatch.contracts.live_state import LiveStateReader

from datasets import field_case
from pipeline_harness import Pipeline, raw_headers

pytestmark = pytest.mark.services

MINUTE_NS = 60 * 10**9


def test_field_case_c20_camera_clock_skew_counts_by_the_workers_clock(
        apache_kafka, redis_url, postgres_server, tmp_path, quick_model):
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, postgres_server.url, tmp_path / "state",
                 quick_model.model_dir)
    try:
        frame = (field_case("c19_header_values") / "c19_frame_640x480.jpg").read_bytes()
        p.start_worker("w1")
        now = time.time_ns()
        # (a) 50 frames on time, then the camera restarts with its clock 10 min behind and sends 50 more
        p.publish_raw([(frame, raw_headers("cam-behind", "L1", 1000 + n, captured_ns=now + n * 10**6))
                       for n in range(50)], camera_id="cam-behind")
        p.publish_raw([(frame, raw_headers("cam-behind", "L1", 2000 + n, captured_ns=now - 10 * MINUTE_NS + n * 10**6))
                       for n in range(50)], camera_id="cam-behind")
        # (b) a camera 5 min ahead
        p.publish_raw([(frame, raw_headers("cam-ahead", "L1", 3000 + n, captured_ns=now + 5 * MINUTE_NS + n * 10**6))
                       for n in range(50)], camera_id="cam-ahead")
        assert p.wait_for_rows(150, timeout_s=240) == 150
        time.sleep(1.5)  # the live state is written just after the SQL rows
        done = dt.datetime.now(dt.UTC)

        reader = LiveStateReader(p.redis)
        assert p.redis_totals("cam-behind").inspected == 100  # (a): none of the later 50 is lost
        last5 = reader.totals("camera", "cam-ahead", done - dt.timedelta(minutes=5), done)
        assert last5.inspected == 50  # (b): "Last 5 min" holds all 50
        latest, _ = reader.latest("cam-behind")
        assert latest is not None and latest.frame.frame_id == 2049  # the newest processed, not the newest stamp

        rows = p.rows()
        assert min(r.total_ms for r in rows) >= 0 and min(r.queue_wait_ms for r in rows) >= 0
        assert max(r.total_ms for r in rows) < 120_000  # a clock 10 min behind is not 10 min of latency

        states = reader.camera_states()
        assert states["cam-behind"]["skewed"] == 50 and states["cam-ahead"]["skewed"] == 50
        assert states["cam-behind"]["skew_ms"] == pytest.approx(-600_000, abs=60_000)
        assert states["cam-ahead"]["skew_ms"] == pytest.approx(300_000, abs=60_000)
        with p.engine.connect() as conn:  # no camera pinned in the future in the record either
            last_seen = conn.execute(text("SELECT max(last_seen) FROM cameras")).scalar_one()
        if last_seen.tzinfo is None:
            last_seen = last_seen.replace(tzinfo=dt.UTC)
        assert last_seen <= done

        for key in p.redis.scan_iter(match="*cam-*"):  # every per-camera key expires
            assert p.redis.ttl(key) > 0, key

        consumer = KafkaConsumer(p.settings.kafka.frames_topic, bootstrap_servers=apache_kafka.bootstrap_servers,
                                 auto_offset_reset="earliest", consumer_timeout_ms=30_000)
        record = next(iter(consumer))
        consumer.close()
        assert record.timestamp_type == 1  # LogAppendTime: the broker's clock, whatever the camera's
        assert p.stop_workers() == {"w1": 0}
    finally:
        p.close()
