"""Two products through one consumer group of two workers (issue 18), against real Apache Kafka, Redis and
PostgreSQL: frames of both products interleaved on the same partitions, each scored by its own product's model;
a rollout of one product changes nothing for the other; a changeover splits a camera's rows exactly at its
recorded time; a product without a model dead-letters its frames (``no_model``)."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from kafka import KafkaProducer

from linewatch.contracts.changeovers import record_changeover
from linewatch.contracts.live_state import LiveStateReader
from linewatch.contracts.messages import FrameMeta
from linewatch.trainer.registry import ModelRegistry

from datasets import bottle
from pipeline_harness import Pipeline, other_model, service_tracebacks

pytestmark = pytest.mark.services

T0 = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=10)  # frames' capture times from here


@pytest.fixture
def line(apache_kafka, redis_url, postgres_server, tmp_path, quick_model):
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, postgres_server.url, tmp_path / "state",
                 quick_model.model_dir)
    p.registry = ModelRegistry(p.engine, p.settings.artifact_store_root, p.settings.kafka)
    with p.engine.begin() as conn:
        for table in ("training_jobs", "models", "camera_products"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
    yield p
    p.close()


def _publish(p: Pipeline, frames: list[tuple[str, int, dt.datetime, str | None]]) -> None:
    """Frames (camera, frame id, capture time, product header) of one bottle image, spread over the four
    partitions in turn, so that the products interleave on every partition."""
    image = (bottle() / "test" / "good" / "000.png").read_bytes()
    producer = KafkaProducer(bootstrap_servers=p.settings.kafka.bootstrap_servers, acks="all",
                             max_request_size=p.settings.kafka.max_message_bytes)
    for n, (camera, frame_id, at, product) in enumerate(frames):
        meta = FrameMeta(camera, "line-1", frame_id, int(at.timestamp() * 1e9), "image/png", None, product)
        producer.send(p.settings.kafka.frames_topic, key=camera.encode(), value=image, headers=meta.headers(),
                      partition=n % 4)
    producer.flush(30)
    producer.close()


def _workers(p: Pipeline) -> list[dict]:
    return [w for w in LiveStateReader(p.redis).workers() if w["alive"]]


def test_two_products_two_workers_routed_rolled_out_and_changed_over(line, tmp_path):
    p = line
    bottle_v1 = p.registry.use(p.model_dir, "test", product="bottle").version
    tile_v1 = p.registry.use(other_model(p.model_dir, tmp_path / "tile-1"), "test", product="tile").version
    assert (bottle_v1, tile_v1) == ("bottle/v1", "tile/v1")
    # cam-b: bottle by its frames' header; cam-t: tile by a changeover; cam-c: bottle, then (mid-stream) tile
    record_changeover(p.engine, "cam-t", "tile", "test", since=T0)
    record_changeover(p.engine, "cam-c", "bottle", "test", since=T0)
    for name in ("w1", "w2"):
        p.start(name, "detect", "--threads", "1")
    p.wait_for_workers(2)

    def wave(ids: range) -> list:
        """cam-b, cam-t and cam-c frames ``ids``, captured 5 s apart from T0."""
        at = [T0 + dt.timedelta(seconds=5 * i) for i in ids]
        return [(c, i, t, h) for i, t in zip(ids, at, strict=True)
                for c, h in (("cam-b", "bottle"), ("cam-t", None), ("cam-c", None))]

    _publish(p, wave(range(6)) + [("cam-x", 0, T0, "nomodel")])  # cam-x: a product with no model
    p.wait_for_rows(18, timeout_s=240)
    switch_at = T0 + dt.timedelta(seconds=30)  # between cam-c's frame 5 (T0 + 25 s) and frame 6 (T0 + 30 s)
    record_changeover(p.engine, "cam-c", "tile", "test", since=switch_at)
    time.sleep(2 * p.settings.products.changeover_refresh_s + 0.5)  # the workers reread the history
    late = ("cam-c", 99, switch_at - dt.timedelta(milliseconds=1), None)  # captured just before: still bottle
    _publish(p, wave(range(6, 12)) + [late])
    p.wait_for_rows(37, timeout_s=240)
    rows = p.rows()
    assert len(rows) == 37 and len({r.worker_id for r in rows}) == 2  # both workers scored, each both products
    by_camera = {c: sorted((r for r in rows if r.camera_id == c), key=lambda r: r.frame_id)
                 for c in ("cam-b", "cam-t", "cam-c")}
    assert {(r.product, r.model_version) for r in by_camera["cam-b"]} == {("bottle", "bottle/v1")}
    assert {(r.product, r.model_version) for r in by_camera["cam-t"]} == {("tile", "tile/v1")}
    assert [r.product for r in by_camera["cam-c"]] == ["bottle"] * 6 + ["tile"] * 6 + ["bottle"]  # 99: the late one
    assert all((r.captured_at >= switch_at) == (r.product == "tile") for r in by_camera["cam-c"])
    for w in rows:
        assert w.model_version.startswith(w.product + "/")
    (dead,) = p.consume(p.settings.kafka.dead_letter_topic, 1)
    headers = {k: v.decode() for k, v in dead.headers}
    assert (headers["camera_id"], headers["dlq.reason"]) == ("cam-x", "no_model")
    assert "no active model" in headers["dlq.detail"]
    for w in _workers(p):
        assert {k: v["model_version"] for k, v in w["products"].items()} == {"bottle": "bottle/v1", "tile": "tile/v1"}

    # a rollout of tile: bottle's frames and model stay as they were
    tile_v2 = p.registry.register(other_model(tmp_path / "tile-1", tmp_path / "tile-2"), product="tile").version
    p.registry.activate(tile_v2, "test")
    p.wait_until(lambda: all(w["products"]["tile"]["model_version"] == tile_v2 for w in _workers(p)), 60,
                 "both workers on tile/v2", poll_s=0.5)
    later = T0 + dt.timedelta(minutes=5)
    _publish(p, [(c, 100 + i, later, h) for i in range(6) for c, h in (("cam-b", "bottle"), ("cam-t", None))])
    p.wait_for_rows(49, timeout_s=180)
    new = [r for r in p.rows() if r.frame_id >= 100]
    assert {(r.camera_id, r.model_version) for r in new} == {("cam-b", "bottle/v1"), ("cam-t", tile_v2)}
    for w in _workers(p):
        assert w["products"]["bottle"]["model_version"] == "bottle/v1"
    assert p.stop_workers() == {"w1": 0, "w2": 0}
    for name in ("w1", "w2"):
        assert service_tracebacks((p.logs / f"{name}.log").read_text()) == []


def test_a_worker_waits_for_no_product_of_its_own(line, tmp_path):
    """A worker started with no --model on a registry that holds only a non-default product scores that product;
    the default product's frames are dead-lettered, not scored by it."""
    p = line
    p.registry.use(p.model_dir, "test", product="bottle")
    p.start("w1", "detect", "--threads", "1")
    p.wait_for_workers(1)
    now = dt.datetime.now(dt.UTC)
    _publish(p, [("cam-1", 1, now, "bottle"), ("cam-1", 2, now, None)])
    p.wait_for_rows(1, timeout_s=120)
    (dead,) = p.consume(p.settings.kafka.dead_letter_topic, 1)
    assert dict(dead.headers)["dlq.reason"] == b"no_model" and dict(dead.headers)["frame_id"] == b"2"
    time.sleep(1.0)
    assert [(r.frame_id, r.product) for r in p.rows()] == [(1, "bottle")]
    assert p.stop_workers() == {"w1": 0}
