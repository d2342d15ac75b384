"""Field cases c28 (label noise) and c28b (a poisoned promotion): the label guards and the promotion rule on a
real SQL record (SQLite and PostgreSQL), real kept images of MVTec AD bottles, real scores of a small model,
and the trainer's own job runner.

c28: one operator confirms as good a broken bottle the model scored about 3x its threshold, three near-copies of
one good frame (JPEG q92, q91, a 1-px shift) and 40 frames of a stalled conveyor -> the broken bottle needs a
second operator, the near-copies collapse to one, the stalled scene is capped, and the promotion review never
counts the candidate's own training frames. c28b: 20 defective bottles labelled good, then a retraining -> not
activated automatically: no defect evidence, or misses rose.
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.files import path_of, sha256_file
from linewatch.contracts.labels import awaiting_second_opinion, confirmed_good_frames
from linewatch.contracts.schema import Inspection
from linewatch.contracts.settings import Settings
from linewatch.dashboard import data, review_queue
from linewatch.dashboard.review_queue import QueueRule
from linewatch.detector.imaging import read_image
from linewatch.detector.scoring import Scorer
from linewatch.trainer import job_queue as jobs
from linewatch.trainer.dataset import build_training_set
from linewatch.trainer.job import run_job
from linewatch.trainer.promotion import review_set
from linewatch.trainer.registry import ModelRegistry

from datasets import bottle

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)


def _jpeg(rgb: np.ndarray, quality: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(rgb).save(out, "JPEG", quality=quality)
    return out.getvalue()


@dataclass
class Line:
    """A record (engine), an image store, the settings of a trainer using them, and a scorer of the active model."""

    engine: Engine
    settings: Settings
    scorer: Scorer
    next_frame: int = 0

    def keep(self, content: bytes, suffix: str, camera_id: str, captured_at: dt.datetime) -> int:
        """Store ``content`` as a kept frame with its real score by the active model -> inspection id."""
        self.next_frame += 1
        folder = self.settings.image_store_root / camera_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.next_frame:05d}{suffix}"
        path.write_bytes(content)
        score = float(self.scorer.score_images([read_image(path)]).image_scores[0])
        normalized = score / self.scorer.image_threshold
        with self.engine.begin() as conn:
            return conn.execute(insert(Inspection).values(
                camera_id=camera_id, line_id="line-1", frame_id=self.next_frame, captured_at=captured_at,
                processed_at=captured_at, model_version=self.scorer.version, image_score=score,
                normalized_score=normalized, verdict="defect" if normalized > 1 else "good",
                threshold=self.scorer.image_threshold, regions=[], width=900, height=900, queue_wait_ms=0,
                decode_ms=0, inference_ms=0, total_ms=0, worker_id="test", image_uri=path.as_uri(),
            ).returning(Inspection.id)).scalar_one()

    def keep_file(self, path: Path, camera_id: str, captured_at: dt.datetime) -> int:
        return self.keep(path.read_bytes(), path.suffix, camera_id, captured_at)


def _line(url: str, state: Path, model_dir: Path, **trainer) -> Line:
    settings = Settings(state_dir=state, database={"url": url}, detector={"device": "cpu"},
                        training={"batch_size": 4, "allow_under_calibrated": True},  # a few dozen goods
                        trainer={"fine_tune_epochs": 2, **trainer})
    engine = make_engine(settings.database_url)
    migrate(engine)
    with engine.begin() as conn:  # the PostgreSQL server is shared by the session's tests
        for table in ("labels", "inspections", "training_jobs", "models"):
            conn.exec_driver_sql(f"DELETE FROM {table}")
    return Line(engine, settings, Scorer(model_dir, "cpu"))


@pytest.fixture(params=["sqlite", "postgresql"])
def line(request, tmp_path, quick_model) -> Iterator[Line]:
    url = f"sqlite:///{tmp_path / 'linewatch.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_server").url
    lw = _line(url, tmp_path / "state", quick_model.model_dir)
    yield lw
    lw.engine.dispose()


@dataclass
class C28:
    broken: int
    copies: list[int]
    stalled: list[int]
    distinct: list[int]


def _far_above_threshold(lw: Line) -> Path:
    """The defective bottle (broken_large or contamination: broken_small is the promotion test's defects) that the
    active model scores highest: c28's "broken bottle scored far above its threshold". Chosen by score, not by name:
    quick_model's normalised scores saturate near 2-2.5 (its 5 held-out goods set a high threshold), and which bottle
    scores highest depends on the CPU the model was trained on (broken_large/000: 2.6 on one, 1.65 on another)."""
    paths = sorted(p for kind in ("broken_large", "contamination") for p in (bottle() / "test" / kind).glob("*.png"))
    scores = lw.scorer.score_images([read_image(p) for p in paths]).normalized
    return paths[int(np.argmax(scores))]


def _c28_frames(lw: Line) -> C28:
    """The c28 frames, kept by the line and scored by the active model (none labelled yet)."""
    test = bottle() / "test"
    broken = lw.keep_file(_far_above_threshold(lw), "cam-1", T0)
    good = read_image(test / "good" / "001.png")
    shifted = np.roll(good, 1, axis=1)
    copies = [lw.keep(_jpeg(img, q), ".jpg", "cam-1", T0 + dt.timedelta(minutes=20 + i))
              for i, (img, q) in enumerate(((good, 92), (good, 91), (shifted, 92)))]
    # A stalled conveyor: one bottle under the camera for 40 s, sensor noise and a flickering lamp.
    still = read_image(test / "good" / "002.png").astype(np.float32)
    rng = np.random.default_rng(28)
    stalled = []
    for i in range(40):
        frame = np.clip(still * rng.uniform(0.97, 1.03) + rng.normal(0, 2, still.shape), 0, 255).astype(np.uint8)
        stalled.append(lw.keep(_jpeg(frame, 92), ".jpg", "cam-2", T0 + dt.timedelta(seconds=i)))
    distinct = [lw.keep_file(p, "cam-3", T0 + dt.timedelta(minutes=15 * i))
                for i, p in enumerate(sorted((bottle() / "train" / "good").glob("*.png"))[100:160:6])]
    return C28(broken, copies, stalled, distinct)


def _ids_by_path(lw: Line) -> dict[Path, int]:
    """Kept file -> inspection id."""
    with lw.engine.connect() as conn:
        return {path_of(r.image_uri): r.id for r in conn.execute(Inspection.__table__.select())}


@pytest.mark.services
def test_c28_a_far_above_threshold_good_needs_a_second_operator_and_near_copies_are_thinned(line):
    lw = line
    f = _c28_frames(lw)
    every = [f.broken, *f.copies, *f.stalled, *f.distinct]
    factor = lw.settings.trainer.second_opinion_above
    with lw.engine.connect() as conn:
        score = conn.execute(Inspection.__table__.select().where(Inspection.id == f.broken)).one().normalized_score
    assert score > factor  # the broken bottle: far above the active model's threshold (2.0 by default)

    assert data.add_labels(lw.engine, every, "good", "alice") == 54  # one operator confirms everything
    with lw.engine.connect() as conn:
        confirmed = {r.id for r in confirmed_good_frames(conn, second_opinion_above=factor)}
        waiting = [(r.id, r.operator, r.good_operators) for r in awaiting_second_opinion(
            conn, second_opinion_above=factor)]
    assert confirmed == set(every) - {f.broken} and waiting == [(f.broken, "alice", 1)]
    rule = QueueRule.from_settings(lw.settings)
    assert [r.id for r in review_queue.waiting(lw.engine, rule, None, limit=100)] == [f.broken]  # offered again
    assert review_queue.waiting(lw.engine, rule, "alice", limit=100) == []  # ... to another operator
    assert data.ready_for_retraining(lw.engine) == 53

    data.add_labels(lw.engine, [f.broken], "good", "alice")  # the same operator again counts once
    with lw.engine.connect() as conn:
        assert f.broken not in {r.id for r in confirmed_good_frames(conn, second_opinion_above=factor)}
    data.add_labels(lw.engine, [f.broken], "good", "bob")  # a different operator: now it is a confirmed good
    with lw.engine.connect() as conn:
        assert f.broken in {r.id for r in confirmed_good_frames(conn, second_opinion_above=factor)}
    assert review_queue.waiting(lw.engine, rule, None, limit=100) == []
    assert data.undo_last(lw.engine, "bob") == [f.broken]  # bob takes it back: waiting again
    with lw.engine.connect() as conn:
        assert [r.id for r in awaiting_second_opinion(conn, second_opinion_above=factor)] == [f.broken]

    # Training set: the broken bottle waits, the near-copies collapse to one, the stalled scene is capped.
    ts = build_training_set(lw.engine, None, None, guards=lw.settings.trainer)
    ids = _ids_by_path(lw)
    used = {ids[p] for p in ts.paths} | {ids[Path(e["path"])] for e in ts.held_out}
    why = {ids[Path(e["path"])]: e["reason"] for e in ts.dropped}
    assert all(e["sha256"] and e["role"] == "dropped" for e in ts.dropped)
    kept_stalled = used & set(f.stalled)
    assert used == {f.copies[0], *f.distinct} | kept_stalled and set(why) == set(every) - used
    assert why[f.broken].startswith(f"awaiting a second operator: scored {score:.1f}")
    first_copy = next(p.name for p, i in ids.items() if i == f.copies[0])
    assert [why[i].split(" (")[0] for i in f.copies[1:]] == [f"near-copy of {first_copy}"] * 2
    assert 1 <= len(kept_stalled) <= lw.settings.trainer.scene_cap
    assert {why[i].split(" ")[0] for i in set(f.stalled) - kept_stalled} <= {"near-copy", "scene"}
    # The cap alone (near-copies not collapsed) keeps scene_cap frames of the stalled scene.
    ts = build_training_set(lw.engine, None, None, guards=lw.settings.trainer.model_copy(
        update={"near_copy_distance": None}))
    used = {ids[p] for p in ts.paths} | {ids[Path(e["path"])] for e in ts.held_out}
    assert len(used & set(f.stalled)) == lw.settings.trainer.scene_cap
    assert set(f.copies) | set(f.distinct) <= used  # three copies are within the cap of 3
    assert all(e["reason"].startswith(("scene cap", "awaiting")) for e in ts.dropped)


def _retrain(lw: Line) -> tuple:
    """Run one retraining job with the trainer's own job runner -> (finished job, registered candidate row)."""
    job_id = jobs.request_job(lw.engine, "manual", "test")
    jobs.claim_next(lw.engine, 0)
    code = run_job(lw.settings, job_id)
    job = jobs.get_job(lw.engine, job_id)
    assert code == 0, job.error
    return job, ModelRegistry(lw.engine, lw.settings.artifact_store_root, None).get(job.candidate_version)


@pytest.fixture
def sqlite_line(tmp_path, quick_model) -> Iterator[Line]:
    lw = _line(f"sqlite:///{tmp_path / 'linewatch.db'}", tmp_path / "state", quick_model.model_dir)
    ModelRegistry(lw.engine, lw.settings.artifact_store_root, None).use(quick_model.model_dir, "test")
    yield lw
    lw.engine.dispose()


@pytest.mark.slow
def test_c28_the_promotion_review_never_counts_the_candidates_own_training_frames(sqlite_line):
    lw = sqlite_line
    f = _c28_frames(lw)
    defects = [lw.keep_file(p, "cam-4", T0) for p in sorted((bottle() / "test" / "broken_small").glob("*.png"))[:3]]
    data.add_labels(lw.engine, [f.broken, *f.copies, *f.stalled, *f.distinct], "good", "alice")
    data.add_labels(lw.engine, defects, "defect", "alice")
    job, v2 = _retrain(lw)
    roles = {}
    for item in v2.manifest:
        roles.setdefault(item["role"], []).append(item)
    trained = {m["sha256"] for m in roles["train"] + roles["val"]}
    broken_sha = sha256_file(path_of(next(r for r in _ids_by_path(lw).items() if r[1] == f.broken)[0]))
    assert broken_sha not in trained  # one operator's good on a 3x frame trains nothing
    assert [m["reason"].split(":")[0] for m in roles["dropped"]].count("awaiting a second operator") == 1
    assert len(roles["dropped"]) >= 2 + 40 - 3  # near-copies and stalled frames left out, each with a reason
    evidence = review_set(lw.engine, lw.settings.trainer, v2.manifest)
    assert not {sha256_file(fr.path) for fr in evidence.frames} & ({m["sha256"] for m in v2.manifest
                                                                    if m["role"] != "held_out"})
    assert broken_sha not in {sha256_file(fr.path) for fr in evidence.frames if not fr.is_defect}
    held_out = len(roles.get("held_out", []))
    assert v2.metrics["evidence"] == {"goods": held_out, "confirmed_defects": 3, "reference_defects": 0,
                                      "excluded_as_training_frames": v2.metrics["evidence"][
                                          "excluded_as_training_frames"]}
    assert v2.metrics["evidence"]["excluded_as_training_frames"] >= 10  # the trained goods were left out
    assert v2.metrics["review_set"]["good"] == held_out and v2.metrics["review_set"]["defect"] == 3
    print(f"c28: {len(roles['train'])} train, {len(roles['val'])} val, {held_out} held out, "
          f"{len(roles['dropped'])} dropped; decision: {v2.metrics['decision']}")


@pytest.mark.slow
def test_c28b_defects_labelled_good_are_not_activated_automatically(sqlite_line, tmp_path):
    lw = sqlite_line
    test = bottle() / "test"
    poisoned = [lw.keep_file(p, "cam-1", T0 + dt.timedelta(minutes=i))
                for i, p in enumerate(sorted((test / "broken_large").glob("*.png")))]
    goods = [lw.keep_file(p, "cam-2", T0 + dt.timedelta(minutes=15 * i))
             for i, p in enumerate(sorted((bottle() / "train" / "good").glob("*.png"))[100:200:10])]
    data.add_labels(lw.engine, poisoned + goods, "good", "alice")

    # No defect labelled, no reference set: refused for want of defect evidence.
    job, v2 = _retrain(lw)
    assert (job.stage, v2.status) == ("rejected", "rejected")
    assert "no defect evidence" in v2.metrics["decision"]
    assert ModelRegistry(lw.engine, lw.settings.artifact_store_root, None).active().version == "v1"

    # A careless second operator confirms the broken bottles too; the product's reference defects are set.
    data.add_labels(lw.engine, poisoned, "good", "bob")
    reference = tmp_path / "reference"
    shutil.copytree(test / "broken_small", reference / "broken_small")
    shutil.copytree(test / "contamination", reference / "contamination")
    lw.settings = lw.settings.model_copy(update={"trainer": lw.settings.trainer.model_copy(
        update={"defect_reference": reference})})
    job, v3 = _retrain(lw)
    m = v3.metrics
    print(f"c28b: candidate misses {m['review_set']['misses']}/{m['review_set']['defect']}, active "
          f"{m['active_on_review_set']['misses']}; thresholds {m['review_set']['threshold']:.4f} vs "
          f"{m['active_on_review_set']['threshold']:.4f}; {m['decision']}")
    assert (job.stage, v3.status) == ("rejected", "rejected")
    assert m["evidence"]["reference_defects"] == 43
    assert m["review_set"]["misses"] > m["active_on_review_set"]["misses"]  # measured: 36 of 43 against 1
    assert "misses rose" in m["decision"]
    assert ModelRegistry(lw.engine, lw.settings.artifact_store_root, None).active().version == "v1"
