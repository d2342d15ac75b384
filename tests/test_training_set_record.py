"""What a training job trains on is recorded on the job (``training_jobs.training_set``, issue 15 "Models"): the
confirmed goods found, used and held out, and each one dropped with its reason. A real SQL record (SQLite), real
kept images of MVTec AD bottles scored by a small model, and the trainer's own job runner (as test_label_noise.py).
"""

from __future__ import annotations

import datetime as dt

import pytest
from test_label_noise import T0, sqlite_line  # noqa: F401 -- the fixture

from linewatch.contracts.files import path_of
from linewatch.dashboard import data
from linewatch.trainer import job_queue as jobs
from linewatch.trainer.job import run_job

from datasets import bottle

pytestmark = pytest.mark.services


def test_a_job_lists_an_unreadable_and_a_duplicate_confirmed_good_with_their_reasons(sqlite_line):  # noqa: F811
    lw = sqlite_line
    goods = sorted((bottle() / "test" / "good").glob("*.png"))[:8]  # none is a base image (those are train/good)
    ids = [lw.keep_file(p, "cam-1", T0 + dt.timedelta(minutes=15 * i)) for i, p in enumerate(goods)]
    # The same bottle's bytes kept again later (a camera that re-sent a frame) ...
    twin = lw.keep_file(goods[0], "cam-1", T0 + dt.timedelta(hours=5))
    # ... and a kept frame damaged on disk after it was scored (a half-written copy).
    damaged = lw.keep_file(sorted((bottle() / "test" / "good").glob("*.png"))[10], "cam-1",
                           T0 + dt.timedelta(hours=6))
    with lw.engine.connect() as conn:
        uris = dict(conn.exec_driver_sql("SELECT id, image_uri FROM inspections").all())
    damaged_path, first_path = path_of(uris[damaged]), path_of(uris[ids[0]])
    damaged_path.write_bytes(damaged_path.read_bytes()[:200])
    data.add_labels(lw.engine, [*ids, twin, damaged], "good", "alice")

    job_id = jobs.request_job(lw.engine, "manual", "alice")
    jobs.claim_next(lw.engine, 0)
    assert run_job(lw.settings, job_id) == 0
    job = jobs.get_job(lw.engine, job_id)
    t = job.training_set
    print(f"job {job_id} ({job.stage}): {t['confirmed_found']} confirmed goods found, {t['used']} used, "
          f"{t['held_out']} held out, dropped {t['dropped_by_kind']}")

    assert t["confirmed_found"] == 10 and t["awaiting_second_opinion"] == 0
    assert t["dropped_by_kind"] == {"duplicate": 1, "unreadable": 1}
    by_kind = {d["kind"]: d for d in t["dropped"]}
    assert by_kind["duplicate"]["path"] == str(path_of(uris[twin]))
    assert by_kind["duplicate"]["reason"] == f"same bytes as {first_path.name}"
    assert by_kind["unreadable"]["path"] == str(damaged_path)
    assert by_kind["unreadable"]["reason"].startswith("unreadable: ")
    assert {d["source"] for d in t["dropped"]} == {"confirmed"}
    assert t["used"] + t["held_out"] == 8 and t["used"] >= 1
    assert t["base"] == len([m for m in lw_active_manifest(lw) if m.get("role") in ("train", "val")])


def lw_active_manifest(lw) -> list[dict]:
    """The manifest of version v1 (the job's parent): its train/val images are the job's base images."""
    from linewatch.trainer.registry import ModelRegistry

    return ModelRegistry(lw.engine, lw.settings.artifact_store_root, None).get("v1").manifest
