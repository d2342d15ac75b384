"""The dashboard per product (issue 18, docs/products.md), below the pages: the per-product queries (defect counts,
the defect gallery, the review queue and its claims, the registered versions, the products the record knows) return
only the chosen product's rows, on SQLite and PostgreSQL; the ``model_rollout`` alarm compares each product's
workers with that product's active version, from a real record and real worker heartbeats in Redis (two products,
one behind and one not: only the one behind alarms)."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy.engine import Engine

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.live_state import LiveStateWriter
from linewatch.contracts.schema import Inspection, ModelVersion
from linewatch.contracts.settings import Settings
from linewatch.dashboard import data, products
from linewatch.dashboard.alarm_watch import AlarmWatch, active_versions
from linewatch.dashboard.data import GalleryFilter
from linewatch.dashboard.model_review import worker_view
from linewatch.dashboard.review_queue import QueueRule, claim, waiting, waiting_count

from dashboard_seed import reset_sql

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
RULE = QueueRule((0.8, 1.25), 0, None)  # the uncertain band only, no sample, no second opinion


def _row(camera: str, product: str, i: int, score: float) -> dict:
    at = T0 + dt.timedelta(seconds=10 * i)
    return {"camera_id": camera, "line_id": "L1", "frame_id": i, "part_id": None, "captured_at": at,
            "processed_at": at + dt.timedelta(seconds=1), "model_version": "v1" if product == "default"
            else f"{product}/v1", "image_score": score, "normalized_score": score,
            "verdict": "defect" if score >= 1 else "good", "threshold": 1.0, "regions": [], "width": 8, "height": 8,
            "queue_wait_ms": 0.0, "decode_ms": 0.0, "inference_ms": 0.0, "total_ms": 1000.0, "worker_id": "w",
            "image_uri": f"file:///kept/{camera}/{i}.png", "product": product}


# cam-1 shows bottle for frames 1-12 (defects 3, 4, 7, 8; frames 2, 4, 6, 8 in the uncertain band), then
# magnetic_tile for 13-20 (defects 14, 18; 16, 20 in the band); cam-2 shows default (6 frames, defects 1 and 4).
ROWS = ([_row("cam-1", "bottle", i, (1.1, 0.5, 0.9, 2.0)[i % 4] if i <= 8 else 0.3) for i in range(1, 13)]
        + [_row("cam-1", "magnetic_tile", i, (0.85, 0.2, 1.5, 0.1)[i % 4]) for i in range(13, 21)]
        + [_row("cam-2", "default", i, (0.4, 3.0, 0.6)[i % 3]) for i in range(1, 7)])


def _version(version: str, product: str, number: int, status: str, activated: dt.datetime | None) -> dict:
    return {"version": version, "product": product, "number": number, "parent_version": None, "backbone": "resnet18",
            "created_at": T0, "artifact_uri": f"file:///models/{version}", "manifest": [], "metrics": {},
            "thresholds": {"image": 1.0}, "status": status, "activated_by": "test" if activated else None,
            "activated_at": activated, "notes": None}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request, tmp_path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_server").url
    engine = make_engine(url)
    migrate(engine)
    reset_sql(engine)
    with engine.begin() as conn:
        conn.execute(Inspection.__table__.insert(), ROWS)
        conn.execute(ModelVersion.__table__.insert(), [
            _version("bottle/v1", "bottle", 1, "retired", T0), _version("bottle/v2", "bottle", 2, "active", T0),
            _version("magnetic_tile/v1", "magnetic_tile", 1, "active", T0)])
    yield engine
    engine.dispose()


def test_per_product_queries_return_only_that_products_rows(engine):
    assert products.known_products(engine) == ["bottle", "default", "magnetic_tile"]
    assert products.default_choice(["bottle"]) == "bottle"
    assert products.default_choice(["bottle", "default"]) == products.default_choice([]) == "default"
    assert products.choices(["bottle", "default", "magnetic_tile"]) == ["default", "bottle", "magnetic_tile", "all"]

    def counts(product):
        buckets = data.history(engine, ["L1"], T0, T0 + dt.timedelta(hours=1), 3600, product)
        return {b.camera_id: (b.inspected, b.defects) for b in buckets}

    assert counts("bottle") == {"cam-1": (12, 4)}
    assert counts("magnetic_tile") == {"cam-1": (8, 2)}
    assert counts("default") == {"cam-2": (6, 2)}
    assert counts(None) == {"cam-1": (20, 6), "cam-2": (6, 2)}

    window = {"start": T0, "end": T0 + dt.timedelta(hours=1)}
    gallery = data.defect_gallery(engine, GalleryFilter(**window, product="magnetic_tile"), None, 10)
    assert [(r.camera_id, r.frame_id, r.product) for r in gallery.rows] == [("cam-1", 18, "magnetic_tile"),
                                                                            ("cam-1", 14, "magnetic_tile")]
    gallery = data.defect_gallery(engine, GalleryFilter(**window, product="bottle", min_score=1.5), None, 10)
    assert [r.frame_id for r in gallery.rows] == [7, 3]
    assert len(data.defect_gallery(engine, GalleryFilter(**window, camera_id="cam-1"), None, 10).rows) == 6

    def queue(product):
        return [(r.camera_id, r.frame_id) for r in waiting(engine, RULE, None, product=product)]

    assert queue("bottle") == [("cam-1", 2), ("cam-1", 4), ("cam-1", 6), ("cam-1", 8)]  # 0.9, 1.1, 0.9, 1.1
    assert queue("magnetic_tile") == [("cam-1", 16), ("cam-1", 20)]  # 0.85 each
    assert queue("default") == []
    assert waiting_count(engine, RULE, None, product="bottle") == 4
    assert waiting_count(engine, RULE, None) == 6
    # An operator who opens bottle's queue holds only bottle frames; magnetic_tile's stay free for the others.
    mine = claim(engine, RULE, "maria", limit=10, now=T0 + dt.timedelta(hours=1), product="bottle")
    assert {r.product for r in mine} == {"bottle"} and len(mine) == 4
    assert waiting_count(engine, RULE, "olek", now=T0 + dt.timedelta(hours=1)) == 2

    assert [v.version for v in data.model_versions(engine, product="bottle")] == ["bottle/v2", "bottle/v1"]
    assert [v.version for v in data.model_versions(engine, product="default")] == []
    assert [v.version for v in data.model_versions(engine)] == ["bottle/v2", "bottle/v1", "magnetic_tile/v1"]
    assert active_versions(engine) == {"bottle": ("bottle/v2", T0.timestamp()),
                                       "magnetic_tile": ("magnetic_tile/v1", T0.timestamp())}


def test_a_heartbeat_speaks_of_the_products_it_names():
    flat = {"worker_id": "w", "model_version": "bottle/v1", "registry_version": "bottle/v2", "model_behind": None}
    assert worker_view(flat, "bottle")["registry_version"] == "bottle/v2"
    assert worker_view(flat, "default") is None
    assert worker_view({"model_version": "v4"}, "default")["model_version"] == "v4"
    assert worker_view({"model_version": "quick-model"}, "default")["model_version"] == "quick-model"
    mapped = {"products": {"bottle": {"model_version": "bottle/v2", "registry_version": "bottle/v2"}}}
    assert worker_view(mapped, "bottle")["model_version"] == "bottle/v2"
    assert worker_view(mapped, "magnetic_tile") is None


def test_the_rollout_alarm_compares_each_product_with_its_own_active_version(redis_service, tmp_path):
    """bottle/v2 and magnetic_tile/v1 active for 5 min; worker pw-1 (several products) still runs bottle/v1 having
    heard bottle/v2, and magnetic_tile/v1 as it should; pw-2 (one model) runs magnetic_tile/v1; pw-3 runs the
    default product's v1, a product with no active version: only pw-1's bottle is behind."""
    url = f"redis://127.0.0.1:{redis_service.port}/7"
    client = redis.Redis.from_url(url)
    client.flushdb()
    database = f"sqlite:///{tmp_path / 'db.sqlite'}"
    engine = make_engine(database)
    migrate(engine)
    ago = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    with engine.begin() as conn:
        conn.execute(ModelVersion.__table__.insert(), [
            _version("bottle/v1", "bottle", 1, "retired", ago - dt.timedelta(hours=1)),
            _version("bottle/v2", "bottle", 2, "active", ago),
            _version("magnetic_tile/v1", "magnetic_tile", 1, "active", ago)])
    settings = Settings(redis={"url": url}, database={"url": database}, kafka={"bootstrap_servers": ""})
    try:
        writer = LiveStateWriter(client)
        writer.heartbeat("pw-1", {"products": {
            "bottle": {"model_version": "bottle/v1", "registry_version": "bottle/v2", "model_behind": "behind",
                       "model_load_error": "bottle/v2: weights do not match their SHA-256"},
            "magnetic_tile": {"model_version": "magnetic_tile/v1", "registry_version": "magnetic_tile/v1"}}})
        writer.heartbeat("pw-2", {"model_version": "magnetic_tile/v1", "registry_version": "magnetic_tile/v1"})
        writer.heartbeat("pw-3", {"model_version": "v1", "registry_version": "v1"})
        alarms = [a for a in AlarmWatch(settings).tick() if a.kind == "model_rollout"]
        assert [(a.subject, a.severity) for a in alarms] == [("pw-1", "critical")]
        assert alarms[0].text == ("Registry says bottle/v2, worker pw-1 runs bottle/v1: bottle/v2: weights do not "
                                  "match their SHA-256. Announcing again does not help; the model's files must load.")
        # pw-1 loads bottle/v2: no alarm left.
        beat = json.loads(client.hget("linewatch:workers", "pw-1"))
        beat["products"]["bottle"] = {"model_version": "bottle/v2", "registry_version": "bottle/v2"}
        client.hset("linewatch:workers", "pw-1", json.dumps({**beat, "last_seen": time.time()}))
        watch = AlarmWatch(settings)
        assert [a for a in watch.tick() if a.kind == "model_rollout"] == []
        # pw-2 restarts and cannot load magnetic_tile/v1: its alarm alone, naming magnetic_tile's version.
        writer.heartbeat("pw-2", {"model_version": None, "registry_version": "magnetic_tile/v1",
                                 "model_behind": "not loaded", "model_load_error": "disk full"})
        alarms = [a for a in watch.tick() if a.kind == "model_rollout"]
        assert [a.subject for a in alarms] == ["pw-2"]
        assert alarms[0].text.startswith("Registry says magnetic_tile/v1, worker pw-2 runs no model yet: disk full.")
        for wid in ("pw-1", "pw-2", "pw-3"):  # gone: the alarm gauge's series go too (it is process-wide)
            writer.worker_gone(wid)
        assert watch.tick() == []
    finally:
        client.flushdb()
        client.close()
        engine.dispose()
