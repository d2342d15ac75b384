"""Frames that can never be inspected are dead-lettered, never retried forever, and the frames beside them
are stored (field cases c19 header values, c19b far-future timestamp, c02 corrupt JPEG), through a real
worker on Apache Kafka and PostgreSQL."""

from __future__ import annotations

import json
import time

import pytest

from datasets import field_case
from pipeline_harness import Pipeline, raw_headers

pytestmark = pytest.mark.services


def test_field_cases_c19_c19b_c02_poison_frames_are_dead_lettered_and_the_rest_stored(
        apache_kafka, redis_url, postgres_server, tmp_path, quick_model):
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, postgres_server.url, tmp_path / "state",
                 quick_model.model_dir)
    try:
        frame = (field_case("c19_header_values") / "c19_frame_640x480.jpg").read_bytes()
        corrupt = (field_case("c02_corrupt_mid_jpeg") / "jpeg_corrupt_middle_10pct_dropped_900x900.jpg").read_bytes()
        poison = json.loads((field_case("c19_header_values") / "c19_poison_headers.json").read_text())
        items = [(frame, raw_headers("cam-ok", "L1", 1))]
        for n, ids in enumerate(v for v in poison.values() if isinstance(v, dict)):
            items.append((frame, raw_headers(ids["camera_id"], ids["line_id"], 100 + n, part_id=ids.get("part_id"))))
        items.append((frame, raw_headers("cam-future", "L1", 200, captured_ns=10**22)))  # c19b
        items.append((corrupt, raw_headers("cam-corrupt", "L1", 300)))  # c02
        for n, ids in enumerate(poison["camera_id_slash_vs_colon_same_folder"]):  # distinct, both valid
            items.append((frame, raw_headers(ids["camera_id"], ids["line_id"], 400 + n)))
        items.append((frame, raw_headers("cam-ok", "L1", 2)))
        p.publish_raw(items)
        started = time.monotonic()
        p.start_worker("w1")
        assert p.wait_for_rows(4, timeout_s=180) == 4
        dead = p.consume(p.settings.kafka.dead_letter_topic, 6)
        reasons = {int(dict(m.headers)["frame_id"]): dict(m.headers)["dlq.reason"].decode() for m in dead}
        assert reasons == {100: "bad_headers", 101: "bad_headers", 102: "bad_headers", 103: "bad_headers",
                           200: "bad_headers", 300: "corrupt"}
        assert all(dict(m.headers)["dlq.detail"] for m in dead)
        rows = p.rows()
        assert sorted((r.camera_id, r.frame_id) for r in rows) == [("cam-ok", 1), ("cam-ok", 2), ("press/1", 400),
                                                                    ("press:1", 401)]
        assert time.monotonic() - started < 170
        assert p.workers["w1"].poll() is None  # still running: no frame stopped it
        time.sleep(3)
        assert p.row_count() == 4  # nothing was retried into a second row
        assert p.stop_workers() == {"w1": 0}
    finally:
        p.close()
