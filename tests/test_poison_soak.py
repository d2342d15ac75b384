"""A soak of mixed traffic (issue 13, "Done means"): 5% poison frames of every kind among normal frames, four
cameras on four partitions, two ``linewatch detect`` workers on Apache Kafka and PostgreSQL. Every normal frame
has exactly one row, every poison frame one dead letter with its reason, the group's lag ends at 0, and no
worker restarts or exits other than cleanly."""

from __future__ import annotations

import collections
import time

import cv2
import numpy as np
import pytest

from datasets import field_case
from pipeline_harness import Pipeline, raw_headers

pytestmark = pytest.mark.services

NORMAL = 190
CAMERAS = ("cam-a", "cam-b", "cam-c", "cam-d")


def _poison(good: bytes, corrupt: bytes) -> list[tuple[str, bytes | None, list, str]]:
    """(camera, value, headers, expected dead-letter reason): one frame of every kind that can never be inspected."""
    now = time.time_ns()
    bomb = cv2.imencode(".png", np.zeros((6400, 6400), np.uint8))[1].tobytes()  # small file, too many pixels
    h = raw_headers
    return [
        ("cam-a", good, h("cam\x00a", "L1", 9001), "bad_headers"),           # NUL in an id
        ("cam-b", good, h("cam-b", "L1", 9002, part_id="p" * 200), "bad_headers"),  # longer than its column
        ("cam-c", good, h("cam-c", "L1", 9003, captured_ns=10**22), "bad_headers"),  # far-future capture time
        ("cam-d", good, h("cam-d", "L1", 2**63), "bad_headers"),             # frame id past BIGINT
        ("cam-a", good, [(k, b"linewatch.frame/99" if k == "schema" else v)  # a schema this release lacks
                         for k, v in h("cam-a", "L1", 9005)], "bad_headers"),
        ("cam-b", good, [(k, v) for k, v in h("cam-b", "L1", 9006) if k != "frame_id"], "bad_headers"),
        ("cam-c", corrupt, h("cam-c", "L1", 9007, captured_ns=now), "corrupt"),  # c02: bytes lost mid-stream
        ("cam-d", b"", h("cam-d", "L1", 9008), "empty"),                      # empty value
        ("cam-a", b"not an image at all", h("cam-a", "L1", 9009), "not_an_image"),
        ("cam-b", bomb, h("cam-b", "L1", 9010, content_type="image/png"), "too_many_pixels"),  # 41 M pixels
    ]


def test_soak_with_5_percent_poison_frames_across_two_workers(apache_kafka, redis_url, postgres_server, tmp_path,
                                                               quick_model):
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, postgres_server.url, tmp_path / "state",
                 quick_model.model_dir)
    try:
        good = (field_case("c02_corrupt_mid_jpeg") / "intact_128x128.jpg").read_bytes()
        corrupt = (field_case("c02_corrupt_mid_jpeg") / "corrupt_mid_128x128.jpg").read_bytes()
        poison = _poison(good, corrupt)
        assert len(poison) / (len(poison) + NORMAL) == 0.05
        traffic: dict[str, list] = {c: [] for c in CAMERAS}
        for n in range(NORMAL):
            camera = CAMERAS[n % len(CAMERAS)]
            traffic[camera].append((good, raw_headers(camera, "L1", n + 1)))
        for i, (camera, value, headers, _reason) in enumerate(poison):  # spread through each camera's stream
            traffic[camera].insert(7 + 9 * i % 40, (value, headers))
        p.start_worker("w1")
        p.start_worker("w2")
        p.wait_for_workers(2)
        for camera, items in traffic.items():  # key = camera: one camera's frames on one partition, in order
            p.publish_raw(items, camera_id=camera)

        assert p.wait_for_rows(NORMAL, timeout_s=300) == NORMAL
        dead = p.consume(p.settings.kafka.dead_letter_topic, len(poison), timeout_s=60)
        assert p.wait_for_no_lag(timeout_s=60) == 0
        time.sleep(2)
        rows = p.rows()
        assert len(rows) == NORMAL  # exactly one row per normal frame, none for a poison frame
        assert sorted(r.frame_id for r in rows) == list(range(1, NORMAL + 1))
        assert len(dead) == len(poison)  # one dead letter per poison frame
        reasons = collections.Counter(dict(m.headers)["dlq.reason"].decode() for m in dead)
        assert reasons == collections.Counter(reason for *_, reason in poison)
        assert all(dict(m.headers)["dlq.detail"] for m in dead)
        assert all(w.poll() is None for w in p.workers.values())  # no worker died on a frame
        assert p.stop_workers() == {"w1": 0, "w2": 0}
    finally:
        p.close()
