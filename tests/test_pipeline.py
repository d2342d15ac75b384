"""The streaming pipeline against real Apache Kafka, Redis and PostgreSQL (and SQLite, the embedded default).

Workers run as ``linewatch detect`` processes; the camera replays real MVTec AD bottle images.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from prometheus import scrape, status

from linewatch.cli.embedded import free_port
from linewatch.contracts.files import path_of
from linewatch.detector.imaging import decode_image, read_image
from linewatch.detector.scoring import Scorer

from datasets import bottle
from pipeline_harness import Pipeline, frame_headers

pytestmark = pytest.mark.services

BOTTLE_TEST_IMAGES = 83


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'linewatch.db'}"
    return request.getfixturevalue("postgres_server").url


@pytest.fixture
def pipeline(apache_kafka, redis_url, tmp_path, quick_model, request):
    db = request.getfixturevalue("database_url") if "database_url" in request.fixturenames else \
        request.getfixturevalue("postgres_server").url
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, db, tmp_path / "state", quick_model.model_dir)
    yield p
    p.close()


def test_every_bottle_frame_is_inspected_once_and_matches_offline_scoring(pipeline, database_url, quick_model):
    counters = pipeline.publish_folder(bottle() / "test")
    assert (counters.captured, counters.published, counters.dropped, counters.failed) == (83, 83, 0, 0)
    metrics_port = free_port()
    pipeline.env["LINEWATCH_DETECTOR__METRICS_PORT"] = str(metrics_port)
    pipeline.start_worker("w1")
    assert pipeline.wait_for_rows(BOTTLE_TEST_IMAGES) == BOTTLE_TEST_IMAGES
    time.sleep(2)  # anything extra would arrive now
    rows = pipeline.rows()
    assert len(rows) == BOTTLE_TEST_IMAGES
    assert len({r.frame_id for r in rows}) == BOTTLE_TEST_IMAGES
    assert {r.part_id for r in rows} == {p.relative_to(bottle() / "test").as_posix()
                                          for p in (bottle() / "test").rglob("*.png")}
    # Redis agrees with the record.
    totals = pipeline.redis_totals()
    assert (totals.inspected, totals.defects) == (83, sum(r.verdict == "defect" for r in rows))
    # The streaming verdict of each frame is the offline verdict of the same file.
    scorer = Scorer(quick_model.model_dir, "cpu")
    for start in range(0, len(rows), 16):
        chunk = rows[start : start + 16]
        offline = scorer.score_images([read_image(bottle() / "test" / r.part_id) for r in chunk])
        for r, score, defect in zip(chunk, offline.image_scores, offline.is_defect, strict=True):
            assert r.image_score == pytest.approx(float(score), rel=1e-4, abs=1e-6), r.part_id
            assert r.verdict == ("defect" if defect else "good"), r.part_id
    # Kept frames (defects and sampled good ones) are on disk: the scored pixels of the original (the bottle's
    # 8-bit RGB PNG frames are kept byte for byte, see imaging.scored_pixels_file).
    kept = [r for r in rows if r.image_uri]
    assert {r.frame_id for r in rows if r.verdict == "defect"} <= {r.frame_id for r in kept}
    for r in kept[:5]:
        original = (bottle() / "test" / r.part_id).read_bytes()
        stored = path_of(r.image_uri).read_bytes()
        assert stored == original and path_of(r.image_uri).suffix == ".png", r.part_id
        assert bool(np.array_equal(decode_image(stored), decode_image(original))), r.part_id
    # Every result was also published for line integration.
    published = pipeline.consume(pipeline.settings.kafka.inspections_topic, 83)
    assert len({m.value for m in published}) == 83
    # The worker's Prometheus endpoint counts what the record holds; its logs are JSON lines.
    metrics = scrape(metrics_port)
    defects = sum(r.verdict == "defect" for r in rows)
    assert metrics['linewatch_frames_inspected_total{verdict="defect"}'] == defects
    assert metrics['linewatch_frames_inspected_total{verdict="good"}'] == 83 - defects
    assert metrics["linewatch_end_to_end_latency_seconds_count"] == 83
    assert status(metrics_port, "/readyz") == 200
    assert pipeline.stop_workers() == {"w1": 0}
    log_lines = (pipeline.logs / "w1.log").read_text().splitlines()
    assert log_lines and all(json.loads(line)["level"] for line in log_lines)


def test_sigkilled_worker_loses_nothing_and_duplicates_nothing(pipeline):
    # The kill can land between a batch's SQL insert and its Redis increments (the two writes are not one
    # transaction): the survivor finds those rows in the record, so they are not new and it does not count them;
    # the recount from SQL makes the minute whole once it has settled, 4 s here instead of 120.
    pipeline.env["LINEWATCH_REDIS__SETTLE_S"] = "4"
    pipeline.start_worker("w1")
    pipeline.start_worker("w2")
    pipeline.wait_for_workers(2)
    camera = threading.Thread(target=pipeline.publish_folder, args=(bottle() / "test",), kwargs={"fps": 8.0})
    camera.start()
    pipeline.wait_for_rows(20)
    victim = max(pipeline.workers.items(), key=lambda kv: sum(r.worker_id.endswith(f"-{kv[1].pid}")
                                                              for r in pipeline.rows()))[1]
    victim.kill()  # SIGKILL: no chance to commit what it has in flight
    victim.wait(10)
    camera.join(120)
    assert pipeline.wait_for_rows(BOTTLE_TEST_IMAGES) == BOTTLE_TEST_IMAGES
    time.sleep(3)
    rows = pipeline.rows()
    assert len(rows) == BOTTLE_TEST_IMAGES
    assert len({(r.camera_id, r.frame_id) for r in rows}) == BOTTLE_TEST_IMAGES
    assert len({r.worker_id for r in rows}) == 2  # the survivor took over the victim's partitions
    _assert_live_counts_made_whole(pipeline, (83, sum(r.verdict == "defect" for r in rows)))


def test_bad_frames_go_to_the_dead_letter_topic_with_their_reason(pipeline):
    good = (bottle() / "test" / "good" / "000.png").read_bytes()
    jpeg = (bottle() / "test" / "good" / "001.png").read_bytes()
    import cv2

    jpeg = cv2.imencode(".jpg", cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))[1].tobytes()
    bomb = cv2.imencode(".png", np.zeros((5000, 10000), np.uint8))[1].tobytes()  # 50 megapixels, a few kB
    corrupt = good[:1000] + bytes(3000) + good[4000:]
    items = [
        (good, frame_headers(1)),
        (corrupt, frame_headers(2)),
        (jpeg[: len(jpeg) // 2], frame_headers(3, content_type="image/jpeg")),
        (b"line 4 temperature 31.5C\n", frame_headers(4, content_type="text/plain")),
        (b"", frame_headers(5)),
        (bomb, frame_headers(6)),
        (good, [("camera_id", b"cam-raw")]),  # headers missing
        (good, frame_headers(8)),
    ]
    pipeline.publish_raw(items)
    pipeline.start_worker("w1")
    assert pipeline.wait_for_rows(2) == 2
    dead = pipeline.consume(pipeline.settings.kafka.dead_letter_topic, 6)
    reasons = {}
    for m in dead:
        h = {k: v.decode() for k, v in m.headers}
        reasons[h.get("frame_id", "none")] = h["dlq.reason"]
        assert h["dlq.source"].startswith(pipeline.settings.kafka.frames_topic)
        assert h["dlq.detail"]
    assert reasons == {"2": "undecodable", "3": "truncated", "4": "not_an_image", "5": "empty",
                       "6": "too_many_pixels", "none": "bad_headers"}
    by_id = {dict(m.headers).get("frame_id", b"none").decode(): m.value for m in dead}
    assert by_id["2"] == corrupt and by_id["6"] == bomb  # the original bytes, for inspection
    assert sorted(r.frame_id for r in pipeline.rows()) == [1, 8]
    assert pipeline.workers["w1"].poll() is None  # still running
    assert pipeline.stop_workers() == {"w1": 0}


def test_broker_restart_mid_stream_loses_no_acknowledged_frame(pipeline, apache_kafka):
    pipeline.start_worker("w1")
    pipeline.wait_for_workers(1)
    camera = pipeline.camera(bottle() / "test", fps=6.0)
    thread = threading.Thread(target=camera.run, kwargs={"install_signal_handlers": False})
    thread.start()
    pipeline.wait_for_rows(10)
    apache_kafka.restart()
    thread.join(300)
    assert not thread.is_alive()
    c = camera.counters
    assert (c.captured, c.published, c.failed, c.dropped) == (83, 83, 0, 0)
    assert pipeline.wait_for_rows(83, timeout_s=300) == 83
    time.sleep(2)
    assert len({r.frame_id for r in pipeline.rows()}) == pipeline.row_count() == 83


def test_a_postgresql_outage_delays_but_loses_nothing(apache_kafka, redis_service, redis_url, postgres_server,
                                                       tmp_path, quick_model):
    """SQL is the record: while it is away nothing is committed, and a worker dying then loses nothing."""
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, postgres_server.url, tmp_path / "state",
                 quick_model.model_dir)
    try:
        p.start_worker("w1")
        p.wait_for_workers(1)
        p.publish_folder(bottle() / "test" / "good")  # 20 frames
        p.wait_for_rows(20)
        postgres_server.stop()
        p.publish_folder(bottle() / "test" / "broken_large")  # 20 frames arrive while a store is down
        time.sleep(6)  # the worker keeps retrying; nothing may be committed for these frames
        consumer_offsets = _committed(p)
        assert consumer_offsets == 20, "offsets were committed for results that were not stored"
        # A worker that dies during the outage must not lose them either.
        p.workers["w1"].kill()
        p.workers["w1"].wait(10)
        postgres_server.start()
        p.start_worker("w2")
        assert p.wait_for_rows(40) == 40
        _assert_all_committed_and_counted_once(p, 40)
    finally:
        p.close()


def test_a_redis_outage_never_holds_the_record_and_live_counts_are_made_whole(
        apache_kafka, redis_service, redis_url, postgres_server, tmp_path, quick_model):
    """Redis is the live view: while it is away, rows, results and commits go on within ``redis.wait_s``; the
    counts of a worker that died with its live updates still waiting are made whole from the SQL record."""
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, postgres_server.url, tmp_path / "state",
                 quick_model.model_dir, LINEWATCH_REDIS__WAIT_S="2", LINEWATCH_REDIS__SETTLE_S="4")
    try:
        p.start_worker("w1")
        p.wait_for_workers(1)
        p.publish_folder(bottle() / "test" / "good")  # 20 frames
        p.wait_for_rows(20)
        redis_service.stop()
        p.publish_folder(bottle() / "test" / "broken_large")  # 20 frames arrive while Redis is down
        assert p.wait_for_rows(40, timeout_s=120) == 40  # the record does not wait for Redis
        deadline = time.monotonic() + 60
        while _committed(p) < 40 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _committed(p) == 40, "commits waited for Redis"
        p.workers["w1"].kill()  # with its live updates still waiting for Redis
        p.workers["w1"].wait(10)
        redis_service.start()
        p.start_worker("w2")
        _assert_live_counts_made_whole(p, (40, sum(r.verdict == "defect" for r in p.rows())))
    finally:
        p.close()


def _assert_live_counts_made_whole(p: Pipeline, expected: tuple[int, int]) -> None:
    """Redis's (inspected, defects) of cam-1 reach the record's within 120 s, then stay there: no frame is counted
    twice. A minute is recounted from SQL once it closed ``redis.settle_s`` ago, by a recount every
    min(30 s, settle_s / 2): 120 s is enough for the 4-s settle both callers set, not for the default 120 s."""
    deadline = time.monotonic() + 120
    while (p.redis_totals().inspected, p.redis_totals().defects) != expected and time.monotonic() < deadline:
        time.sleep(1)
    totals = p.redis_totals()
    assert (totals.inspected, totals.defects) == expected
    time.sleep(6)  # later recounts and increments leave the counts exact
    totals = p.redis_totals()
    assert (totals.inspected, totals.defects) == expected


def _assert_all_committed_and_counted_once(p: Pipeline, n: int) -> None:
    # The commit follows the stored results, and may take a rebalance longer: w2 can join while the
    # group still expects the killed w1, have its first commits refused, and re-read those frames.
    deadline = time.monotonic() + 60
    while _committed(p) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _committed(p) == n
    rows = p.rows()  # redelivered frames made no second row and no second count
    assert len(rows) == n and len({r.frame_id for r in rows}) == n
    totals = p.redis_totals()
    assert totals.inspected == n
    assert totals.defects == sum(r.verdict == "defect" for r in rows)


def _committed(p: Pipeline) -> int:
    """Sum of the consumer group's committed offsets on the frames topic."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=p.settings.kafka.bootstrap_servers)
    try:
        offsets = admin.list_group_offsets(p.settings.detector.group_id)[p.settings.detector.group_id]
    finally:
        admin.close()
    return sum(o.offset for tp, o in offsets.items() if tp.topic == p.settings.kafka.frames_topic and o.offset > 0)
