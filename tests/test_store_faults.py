"""A full store never holds the line (field cases c21 disk full, c22 Redis full) and a frame the database
refuses for good is dead-lettered alone: the worker's storing step on real PostgreSQL, Redis and a small
file system."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import cv2
import pytest
import redis
from prometheus_client import REGISTRY

from linewatch.cli.embedded import ManagedProcess, free_port
from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.files import path_of
from linewatch.contracts.live_state import LiveStateReader, LiveStateWriter, eviction_warning
from linewatch.contracts.messages import FrameMeta
from linewatch.contracts.schema import Inspection, Label
from linewatch.contracts.settings import KafkaSettings, RedisSettings
from linewatch.detector.scoring import Scorer
from linewatch.detector.stream.batches import PreparedFrame, RawFrame
from linewatch.detector.stream.frames import prepare_frame
from linewatch.detector.stream.image_retention import ImageRetention, RetentionRule
from linewatch.detector.stream.image_store import ImageStore
from linewatch.detector.stream.inspection import score_batch
from linewatch.detector.stream.result_store import ResultStore

from datasets import bottle

pytestmark = pytest.mark.services


def _batch(scorer: Scorer, camera: str, first_id: int, n: int, keep_all: bool = False, jpeg: bool = False):
    """Bottle frames: the PNG files (about 525 KB), or (``jpeg``) encoded at quality 90 (about 95 KB)."""
    images = sorted((bottle() / "test" / "broken_large").glob("*.png"))[:n]
    frames = []
    for i, path in enumerate(images):
        data = path.read_bytes()
        if jpeg:
            data = cv2.imencode(".jpg", cv2.imread(str(path)), [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        meta = FrameMeta(camera, "line-1", first_id + i, time.time_ns(), "image/jpeg" if jpeg else "image/png")
        raw = RawFrame("t.frames", 0, first_id + i, camera.encode(), data, meta.headers())
        prepared = prepare_frame(raw, scorer.geometry, 40_000_000)
        assert isinstance(prepared, PreparedFrame)
        frames.append(prepared)
    batch = score_batch(scorer, frames, "w-test", keep_good=lambda _m: keep_all)
    batch.done.add("kafka")  # the topics are tested with the worker (test_pipeline); here: files, SQL, Redis
    return batch


def _rows(engine, camera: str) -> list:
    with engine.connect() as conn:
        return list(conn.execute(Inspection.__table__.select().where(Inspection.camera_id == camera)))


def _inspected(reader: LiveStateReader, camera: str, around: dt.datetime) -> int:
    return reader.totals("camera", camera, around - dt.timedelta(minutes=5), around + dt.timedelta(minutes=1)).inspected


def _store(engine, redis_client, root: Path, **kwargs) -> ResultStore:
    return ResultStore(engine, LiveStateWriter(redis_client), producer=None, kafka=KafkaSettings(),
                       images=ImageStore(root), worker_id="w-test", **kwargs)


def test_a_row_the_database_refuses_is_dead_lettered_alone(postgres_server, redis_url, quick_model, tmp_path):
    engine = make_engine(postgres_server.url)
    migrate(engine)
    scorer = Scorer(quick_model.model_dir, "cpu")
    batch = _batch(scorer, "cam-refused", 1, 3)
    batch.results[1].frame.part_id = "SN-0042\x00"  # past the header checks: PostgreSQL text holds no NUL
    store = _store(engine, redis.Redis.from_url(redis_url), tmp_path / "images")
    assert store.store(batch, threading.Event())
    assert sorted(r.frame_id for r in _rows(engine, "cam-refused")) == [1, 3]
    assert [(d.raw.offset, d.reason) for d in batch.dead] == [(2, "unstorable")]
    assert "NUL" in batch.dead[0].detail or "0x00" in batch.dead[0].detail
    assert [r.frame.frame_id for r in batch.results] == [1, 3] and len(batch.maps) == 2


@pytest.fixture
def small_redis(tmp_path):
    port = free_port()
    proc = ManagedProcess("redis-full", ["redis-server", "--port", str(port), "--save", "", "--maxmemory", "3mb",
                                         "--maxmemory-policy", "noeviction"], port, tmp_path / "redis").start()
    try:
        yield redis.Redis(port=port)
    finally:
        proc.stop()


def test_an_evicting_redis_is_named_at_start(small_redis):
    assert eviction_warning(small_redis) is None  # noeviction: a full Redis refuses, and the workers wait it out
    for policy in ("allkeys-lru", "volatile-ttl"):
        small_redis.config_set("maxmemory-policy", policy)
        warning = eviction_warning(small_redis)
        assert warning is not None and f"maxmemory-policy {policy}" in warning and "noeviction" in warning
    small_redis.config_set("maxmemory", "0")  # no limit: nothing is evicted
    assert eviction_warning(small_redis) is None


def test_field_case_c22_a_full_redis_never_holds_the_record(postgres_server, small_redis, quick_model, tmp_path):
    engine = make_engine(postgres_server.url)
    migrate(engine)
    scorer = Scorer(quick_model.model_dir, "cpu")
    filler = 0
    while True:  # fill Redis to its maxmemory, as a live state that grew would
        try:
            small_redis.set(f"filler:{filler}", b"x" * 65536)
            filler += 1
        except redis.exceptions.ResponseError as exc:
            assert "maxmemory" in str(exc)
            break
    store = _store(engine, small_redis, tmp_path / "images", redis=RedisSettings(wait_s=1.0, settle_s=120.0))
    batch = _batch(scorer, "cam-c22", 1, 4)
    started = time.monotonic()
    assert store.store(batch, threading.Event())
    assert time.monotonic() - started < 1.0 + 5.0  # redis.wait_s, plus the model-free steps
    assert len(_rows(engine, "cam-c22")) == 4  # the record is exact
    assert not store.live.flush() and len(store.live.pending) == 1  # live state waits
    small_redis.config_set("maxmemory", "0")  # Redis has room again
    time.sleep(2.1)  # past the pause after a refused write
    assert store.live.flush()
    reader = LiveStateReader(small_redis)
    now = batch.results[0].processed_at
    assert _inspected(reader, "cam-c22", now) == 4
    assert store.store(_batch(scorer, "cam-c22", 1, 4), threading.Event())  # redelivered: no second count
    assert _inspected(reader, "cam-c22", now) == 4


@pytest.fixture
def one_mib_disk(tmp_path):
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def test_field_case_c21_a_full_disk_makes_room_and_never_holds_the_record(postgres_server, redis_url, quick_model,
                                                                          one_mib_disk):
    engine = make_engine(postgres_server.fresh_database("c21"))  # retention looks at every row of its record
    migrate(engine)
    scorer = Scorer(quick_model.model_dir, "cpu")
    retention = ImageRetention(engine, one_mib_disk, RetentionRule(max_age_days=None, min_free_ratio=0.05))
    store = _store(engine, redis.Redis.from_url(redis_url), one_mib_disk, retention=retention)
    (one_mib_disk / ".crashed.png.4242.tmp").write_bytes(b"x" * 1000)  # a worker killed mid-write left this
    os.utime(one_mib_disk / ".crashed.png.4242.tmp", (time.time() - 3600, time.time() - 3600))
    for first in range(1, 31, 3):  # frames of about 100 KB, as in the case: the disk holds about eight
        assert store.store(_batch(scorer, "cam-c21", first, 3, keep_all=True, jpeg=True), threading.Event())
        if first == 1:  # an operator labels the first frame: retention must keep it
            with engine.begin() as conn:
                conn.execute(Label.__table__.insert().values(
                    inspection_id=_rows(engine, "cam-c21")[0].id, label="defect", operator="op",
                    created_at=dt.datetime.now(dt.UTC)))
    rows = _rows(engine, "cam-c21")
    assert len(rows) == 30  # every frame has its row, whatever the disk did
    kept = [r for r in rows if r.image_uri]
    assert rows[0].image_uri and path_of(rows[0].image_uri).is_file()  # the labelled frame survived
    assert rows[-1].image_uri and path_of(rows[-1].image_uri).is_file()  # room was made for the newest
    assert all(path_of(r.image_uri).is_file() for r in kept)  # no row points at a removed file
    on_disk = {p.name for p in one_mib_disk.rglob("*.jpg") if ".heatmap." not in p.name}
    assert on_disk == {path_of(r.image_uri).name for r in kept}  # every removed frame's files are gone
    assert retention.last.by_space > 0 and not retention.full
    assert [p.name for p in one_mib_disk.rglob("*.tmp")] == [".crashed.png.4242.tmp"]  # no partial file of ours
    retention.run_once()  # the worker's periodic pass sweeps what a crashed worker left
    assert not list(one_mib_disk.rglob("*.tmp"))
    reader = LiveStateReader(redis.Redis.from_url(redis_url))
    assert _inspected(reader, "cam-c21", rows[-1].processed_at) == 30

    # Nothing left to remove (every kept frame labelled): frames are stored without images, and the alarm is up.
    with engine.begin() as conn:
        conn.execute(Label.__table__.insert(), [
            {"inspection_id": r.id, "label": "good", "operator": "op", "created_at": dt.datetime.now(dt.UTC)}
            for r in kept[1:]])
    batch = _batch(scorer, "cam-c21", 100, 3, keep_all=True, jpeg=True)
    with contextlib.suppress(OSError):  # fill what is left so that not even one frame fits
        (one_mib_disk / "filler").write_bytes(b"\0" * shutil.disk_usage(one_mib_disk).free)
    assert store.store(batch, threading.Event())
    assert len(_rows(engine, "cam-c21")) == 33 and not any(r.image_uri for r in _rows(engine, "cam-c21")[30:])
    assert retention.full
    assert REGISTRY.get_sample_value("linewatch_image_store_full") == 1
