"""The trainer per product (issue 18, docs/products.md step 7): a job retrains one product from that product's
confirmed goods only, registers ``bottle/v2`` and leaves another product's versions and announcement as they were;
each product has its own unfinished job and its own triggers. Real SQL records (SQLite and PostgreSQL), real kept
images (MVTec AD bottles, Magnetic Tile), a real small model, the trainer's own job runner and service loop, and a
real Apache Kafka broker for the announcements.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, update
from sqlalchemy.engine import Engine
from test_label_noise import T0, Line
from test_product_registry import model_dir
from typer.testing import CliRunner

from linewatch.cli import app
from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.files import path_of, sha256_file
from linewatch.contracts.kafka import ensure_topics
from linewatch.contracts.products import ProductError
from linewatch.contracts.schema import Inspection, Label, ModelVersion, TrainingJob
from linewatch.contracts.settings import Settings, get_settings
from linewatch.contracts.trainer_settings import product_path
from linewatch.dashboard import data
from linewatch.detector.scoring import Scorer
from linewatch.trainer import job_queue as jobs
from linewatch.trainer.job import run_job
from linewatch.trainer.registry import ModelRegistry
from linewatch.trainer.rollout import current_announcement
from linewatch.trainer.service import TrainerService

from datasets import bottle, magnetic_tile

TILE = "mt"  # the second product (a short name keeps the version names short: mt/v1)


def _keep(lw: Line, path: Path, product: str, camera_id: str, at: dt.datetime) -> int:
    """A kept frame of ``product`` with its real score by the quick model -> inspection id."""
    inspection_id = lw.keep_file(path, camera_id, at)
    with lw.engine.begin() as conn:
        conn.execute(update(Inspection).where(Inspection.id == inspection_id).values(product=product))
    return inspection_id


@pytest.mark.services
def test_a_bottle_job_trains_registers_and_announces_bottle_only(apache_kafka, tmp_path, quick_model):
    settings = Settings(state_dir=tmp_path / "state", database={"url": f"sqlite:///{tmp_path / 'record.db'}"},
                        detector={"device": "cpu"}, training={"batch_size": 4, "allow_under_calibrated": True},
                        trainer={"fine_tune_epochs": 1, "export_onnx": False, "announce_attempts": 2},
                        kafka={"bootstrap_servers": apache_kafka.bootstrap_servers,
                               "topic_prefix": f"t{uuid.uuid4().hex[:8]}"})
    engine = make_engine(settings.database_url)
    try:
        migrate(engine)
        ensure_topics(settings.kafka)
        registry = ModelRegistry.for_settings(settings, engine)
        assert registry.use(quick_model.model_dir, "test", "bottle").version == "bottle/v1"
        tile_v1 = registry.use(quick_model.model_dir, "olek", TILE)
        assert tile_v1.version == "mt/v1"
        lw = Line(engine, settings, Scorer(quick_model.model_dir, "cpu"))
        # Both products' frames in one record, from one camera each, interleaved in time; all labelled by alice.
        bottles = sorted((bottle() / "test" / "good").glob("*.png"))[:8]  # none is a base image (train/good)
        tiles = sorted((magnetic_tile() / "MT_Free" / "Imgs").glob("*.jpg"))[:5]
        goods = {"bottle": [], TILE: []}
        for i, b in enumerate(bottles):
            goods["bottle"].append(_keep(lw, b, "bottle", "cam-1", T0 + dt.timedelta(minutes=20 * i)))
            if i < len(tiles):
                goods[TILE].append(_keep(lw, tiles[i], TILE, "cam-2", T0 + dt.timedelta(minutes=20 * i + 1)))
        defects = {"bottle": [_keep(lw, p, "bottle", "cam-1", T0) for p in
                              sorted((bottle() / "test" / "broken_small").glob("*.png"))[:2]],
                   TILE: [_keep(lw, p, TILE, "cam-2", T0) for p in
                          sorted((magnetic_tile() / "MT_Blowhole" / "Imgs").glob("*.jpg"))[:1]]}
        data.add_labels(engine, goods["bottle"] + goods[TILE], "good", "alice")
        data.add_labels(engine, defects["bottle"] + defects[TILE], "defect", "alice")
        with engine.connect() as conn:
            uris = dict(conn.exec_driver_sql("SELECT id, image_uri FROM inspections").all())
        sha = {k: {sha256_file(path_of(uris[i])) for i in goods[k]} for k in goods}

        job_id = jobs.request_job(engine, "manual", "alice", product="bottle")
        assert jobs.claim_next(engine, 0).product == "bottle"
        code = run_job(settings, job_id)
        job = jobs.get_job(engine, job_id)
        assert code == 0, job.error
        print(f"job {job_id} ({job.product}, {job.stage}): {job.training_set['used']} used, "
              f"{job.training_set['held_out']} held out")

        # The job collected the bottle goods only, and the candidate is bottle's next version, from bottle/v1.
        assert (job.product, job.candidate_version) == ("bottle", "bottle/v2")
        assert job.training_set["confirmed_found"] == 8
        assert job.training_set["used"] + job.training_set["held_out"] == 8
        v2 = registry.get("bottle/v2")
        assert (v2.product, v2.parent_version) == ("bottle", "bottle/v1")
        manifest = {m["sha256"] for m in v2.manifest}
        assert sha["bottle"] <= manifest and not sha[TILE] & manifest  # no tile frame trained, held out or dropped
        # Its review judged it against bottle/v1 on bottle evidence: the 2 bottle defects, not the tile one.
        assert v2.metrics["evidence"]["confirmed_defects"] == 2
        assert v2.metrics["evidence"]["goods"] == job.training_set["held_out"]

        # The promotion rule may refuse a 1-epoch fine-tune of the quick model (its threshold moves, say): then an
        # engineer activates it, as `linewatch model activate bottle/v2` does. Either way bottle/v2 goes live on
        # bottle's key, and mt's version and announcement stay as they were.
        print(f"decision: {v2.metrics['decision']}")
        assert job.stage in ("activated", "rejected")
        if job.stage == "rejected":
            registry.activate("bottle/v2", "bob")
        assert [(r.version, r.status) for r in registry.list("bottle")] == [("bottle/v1", "retired"),
                                                                           ("bottle/v2", "active")]
        assert current_announcement(settings.kafka, product="bottle").version == "bottle/v2"
        tile_now = registry.list(TILE)
        assert [(r.version, r.status, r.activated_by, r.activated_at) for r in tile_now] == \
            [("mt/v1", "active", "olek", tile_v1.activated_at)]
        announced = current_announcement(settings.kafka, product=TILE)
        assert (announced.version, announced.activated_by, announced.activated_at) == \
            ("mt/v1", "olek", tile_v1.activated_at)
        assert registry.active() is None and current_announcement(settings.kafka) is None  # default: nothing
        assert jobs.last_finished(engine, TILE) is None and jobs.last_finished(engine, "bottle").id == job_id
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def record(request, tmp_path) -> Iterator[Settings]:
    """Settings on a fresh record (SQLite, or a fresh PostgreSQL database), no Kafka, triggers at 3 goods."""
    url = f"sqlite:///{tmp_path / 'record.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_server").fresh_database(f"prodtrain_{uuid.uuid4().hex[:8]}")
    yield Settings(state_dir=tmp_path / "state", database={"url": url}, kafka={"bootstrap_servers": ""},
                   trainer={"min_new_good": 3, "schedule_hours": 24})


def _frames(engine: Engine, product: str, n: int, start: int) -> list[int]:
    """``n`` inspection rows of ``product``, scored good, with a kept image URI (never read by the triggers)."""
    ids = []
    with engine.begin() as conn:
        for k in range(start, start + n):
            ids.append(conn.execute(insert(Inspection).values(
                camera_id="cam-1", line_id="line-1", frame_id=k, captured_at=T0, processed_at=T0, product=product,
                model_version="v1", image_score=0.1, normalized_score=0.5, verdict="good", threshold=0.2,
                regions=[], width=64, height=64, queue_wait_ms=0, decode_ms=0, inference_ms=0, total_ms=0,
                worker_id="test", image_uri=f"file:///kept/{k}.png").returning(Inspection.id)).scalar_one())
    return ids


def _unfinished(engine: Engine) -> list[tuple]:
    return sorted((j.product, j.trigger, j.status) for j in jobs.recent_jobs(engine, 50)
                  if j.status in ("queued", "running"))


def test_triggers_count_each_products_own_confirmed_goods(record, tmp_path):
    service = TrainerService(record)
    engine = service.engine
    try:
        for product in ("bottle", TILE):
            service.registry.use(model_dir(tmp_path / product, product), "test", product)
        tile_ids = _frames(engine, TILE, 2, 100)
        data.add_labels(engine, _frames(engine, "bottle", 3, 0) + tile_ids, "good", "alice")
        service._check_triggers()
        assert _unfinished(engine) == [("bottle", "threshold", "queued")]  # mt: 2 of 3 goods, no job
        tile_ids += _frames(engine, TILE, 1, 200)
        data.add_labels(engine, tile_ids[-1:], "good", "alice")
        service._check_triggers()
        service._check_triggers()  # each product's unfinished job is reused
        assert _unfinished(engine) == [("bottle", "threshold", "queued"), (TILE, "threshold", "queued")]

        # Both jobs end; then mt's active version, last job and labels are older than trainer.schedule_hours (no
        # good confirmed since): mt alone is due, by the schedule.
        for _ in range(2):
            jobs.finish(engine, jobs.claim_next(engine, 0).id, "failed", error="test")
        old = dt.datetime.now(dt.UTC) - dt.timedelta(hours=30)
        with engine.begin() as conn:
            conn.execute(update(ModelVersion).where(ModelVersion.product == TILE).values(created_at=old))
            conn.execute(update(TrainingJob).where(TrainingJob.product == TILE).values(finished_at=old))
            conn.execute(update(Label).where(Label.inspection_id.in_(tile_ids)).values(
                created_at=old - dt.timedelta(hours=1)))
        service._check_triggers()
        assert _unfinished(engine) == [(TILE, "schedule", "queued")]
    finally:
        engine.dispose()


def test_an_unfinished_job_of_one_product_never_blocks_another(record):
    engine = make_engine(record.database_url)
    try:
        migrate(engine)
        first = jobs.request_job(engine, "manual", "alice", product="bottle")
        assert jobs.request_job(engine, "threshold", "trainer", product="bottle") == first  # reused
        tile = jobs.request_job(engine, "manual", "olek", product=TILE)
        assert tile != first
        assert jobs.claim_next(engine, 1).id == first  # the oldest queued, of any product
        assert jobs.request_job(engine, "manual", "bob", product="bottle") == first  # running: reused
        assert jobs.request_job(engine, "manual", "bob", product=TILE) == tile
        assert jobs.claim_next(engine, 1) is None  # one job runs at a time
        assert jobs.running_job(engine).id == first
        jobs.finish(engine, first, "succeeded")
        assert jobs.claim_next(engine, 1).id == tile
        again = jobs.request_job(engine, "manual", "bob", product="bottle")  # bottle has no unfinished job now
        assert again not in (first, tile)
        assert [j.id for j in jobs.recent_jobs(engine, product=TILE)] == [tile]
        assert [j.id for j in jobs.recent_jobs(engine)] == [again, tile, first]
        assert jobs.get_job(engine, tile).product == TILE and jobs.get_job(engine, first).product == "bottle"
        assert jobs.request_job(engine, "manual", "bob") not in (first, tile, again)  # the product default
        with pytest.raises(ProductError, match="not a product name"):
            jobs.request_job(engine, "manual", "bob", product="Bottle")
    finally:
        engine.dispose()


def test_retrain_and_model_jobs_take_a_product(tmp_path, monkeypatch):
    """``linewatch retrain --product`` and ``model jobs --product`` on a SQLite record, run in this process."""
    monkeypatch.setenv("LINEWATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LINEWATCH_DATABASE__URL", raising=False)
    monkeypatch.delenv("LINEWATCH_KAFKA__BOOTSTRAP_SERVERS", raising=False)

    def linewatch(*args: str, code: int = 0) -> str:
        get_settings.cache_clear()
        done = CliRunner().invoke(app, list(args))
        assert done.exit_code == code, done.output
        return done.stdout if code == 0 else done.stderr

    try:
        assert linewatch("model", "register", str(model_dir(tmp_path / "b1", "b1")), "--product", "bottle",
                         "--activate") == "bottle/v1 registered (active)\n"
        assert linewatch("retrain", "--product", "bottle", "--by", "alice") == \
            "training job 1 of bottle queued; the trainer service (`linewatch trainer`) runs it\n"
        # mt has no active version to fine-tune: said, nothing queued; from scratch it gets its own job
        assert "no active model version of the product mt to fine-tune" in linewatch("retrain", "--product", TILE,
                                                                                      code=2)
        assert linewatch("retrain", "--product", TILE, "--from-scratch") == \
            "training job 2 of mt queued; the trainer service (`linewatch trainer`) runs it\n"
        assert linewatch("retrain", "--product", "bottle").startswith("training job 1 of bottle queued")  # reused
        assert linewatch("model", "jobs") == "job 2 mt [queued] \njob 1 bottle [queued] \n"
        assert linewatch("model", "jobs", "--product", "bottle") == "job 1 bottle [queued] \n"
        assert linewatch("model", "jobs", "--product", "default") == "no training jobs yet for the product default\n"
        assert "not a product name" in linewatch("retrain", "--product", "Bottle", code=2)
    finally:
        get_settings.cache_clear()


def test_a_setting_folder_serves_its_product():
    assert product_path(Path("/data/{product}/good"), "bottle") == Path("/data/bottle/good")
    assert product_path(Path("/data/good"), "default") == Path("/data/good")
    assert product_path(Path("/data/good"), "bottle") is None  # one product's images never stand for another's
    assert product_path(None, "bottle") is None


def test_a_failing_job_of_one_product_does_not_stop_the_others(tmp_path, monkeypatch, quick_model):
    """The service loop (its own child processes, ``linewatch trainer --run-job``) on a SQLite record: mt's job fails
    (its active version's weights are no model), then bottle's job is claimed and trains."""
    env = {"LINEWATCH_STATE_DIR": str(tmp_path / "state"), "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": "",
           "LINEWATCH_DETECTOR__DEVICE": "cpu", "LINEWATCH_TRAINER__EXPORT_ONNX": "false",
           "LINEWATCH_TRAINER__FINE_TUNE_EPOCHS": "2", "LINEWATCH_TRAINING__BATCH_SIZE": "4",
           "LINEWATCH_TRAINING__ALLOW_UNDER_CALIBRATED": "true"}  # the quick model's few goods
    for name, value in env.items():  # the job processes read the same settings from the environment
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("LINEWATCH_DATABASE__URL", raising=False)
    get_settings.cache_clear()
    try:
        service = TrainerService(get_settings())
    finally:
        get_settings.cache_clear()
    engine = service.engine
    try:
        service.registry.use(model_dir(tmp_path / "tile-model", "no weights"), "test", TILE)
        service.registry.use(quick_model.model_dir, "test", "bottle")
        tile = jobs.request_job(engine, "manual", "olek", product=TILE)
        bottle_job = jobs.request_job(engine, "manual", "alice", product="bottle")
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)
        while (job := jobs.get_job(engine, bottle_job)).status in ("queued", "running") and job.stage != "training":
            assert dt.datetime.now(dt.UTC) < deadline, job
            service.tick()
            service.stop_event.wait(0.5)
        failed = jobs.get_job(engine, tile)
        assert (failed.product, failed.status) == (TILE, "failed") and failed.error
        running = jobs.get_job(engine, bottle_job)
        assert (running.product, running.status, running.stage) == ("bottle", "running", "training")
        assert service.registry.active(TILE).version == "mt/v1"  # the failed job changed nothing of mt
        print(f"mt's job failed ({failed.error.splitlines()[0]}); bottle's job trains ({running.epochs} epochs)")
    finally:
        if service.child is not None:
            service.child.terminate()
            service.child.wait(60)
        engine.dispose()
