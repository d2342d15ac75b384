"""A full store never holds the line (field cases c21 disk full, c22 Redis full) and a frame the database
refuses for good is dead-lettered alone: the worker's storing step on real PostgreSQL, Redis and a small
file system."""

from __future__ import annotations

import datetime as dt
import subprocess
import threading
import time
from pathlib import Path

import pytest
import redis

from linewatch.cli.embedded import ManagedProcess, free_port
from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.live_state import LiveStateReader, LiveStateWriter
from linewatch.contracts.messages import FrameMeta
from linewatch.contracts.schema import Inspection
from linewatch.contracts.settings import KafkaSettings, RedisSettings
from linewatch.detector.scoring import Scorer
from linewatch.detector.stream.batches import PreparedFrame, RawFrame
from linewatch.detector.stream.frames import prepare_frame
from linewatch.detector.stream.image_store import ImageStore
from linewatch.detector.stream.inspection import score_batch
from linewatch.detector.stream.result_store import ResultStore

from datasets import bottle

pytestmark = pytest.mark.services


def _batch(scorer: Scorer, camera: str, first_id: int, n: int, keep_all: bool = False):
    images = sorted((bottle() / "test" / "broken_large").glob("*.png"))[:n]
    frames = []
    for i, path in enumerate(images):
        meta = FrameMeta(camera, "line-1", first_id + i, time.time_ns(), "image/png")
        raw = RawFrame("t.frames", 0, first_id + i, camera.encode(), path.read_bytes(), meta.headers())
        prepared = prepare_frame(raw, scorer.image_size, 40_000_000)
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


def test_field_case_c21_a_full_disk_never_holds_the_record(postgres_server, redis_url, quick_model, one_mib_disk):
    engine = make_engine(postgres_server.url)
    migrate(engine)
    scorer = Scorer(quick_model.model_dir, "cpu")
    store = _store(engine, redis.Redis.from_url(redis_url), one_mib_disk)
    stored = 0
    for first in range(1, 31, 3):  # bottle PNGs of about 400 KB: the disk is full after two
        batch = _batch(scorer, "cam-c21", first, 3, keep_all=True)
        assert store.store(batch, threading.Event())
        stored += 3
    rows = _rows(engine, "cam-c21")
    assert len(rows) == stored == 30
    kept = [r for r in rows if r.image_uri]
    assert 0 < len(kept) < stored  # some images were kept until the disk filled, the rows all the same
    assert not list(one_mib_disk.rglob("*.tmp"))  # no partial files left behind
    reader = LiveStateReader(redis.Redis.from_url(redis_url))
    now = rows[-1].processed_at
    assert _inspected(reader, "cam-c21", now) == 30
