"""The label-noise run of ``bench/retrain.py --label-noise`` (see that script's docstring)."""

from __future__ import annotations

import datetime as dt
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
GUARDS_OFF = {"second_opinion_above": None, "near_copy_distance": None, "scene_cap": None, "review_share": 0.0}


def _frames(bottle, work: Path):
    """The 50 confirmed frames -> [(file, camera, captured_at)], the defects among them, the held-out set."""
    import numpy as np
    from PIL import Image

    from linewatch.detector.imaging import read_image

    goods = bottle.train[-25:]
    defects = sorted((bottle.root / "test" / "broken_large").glob("*.png"))[:5]
    out = [(p, "cam-1", T0 + dt.timedelta(minutes=3 * i)) for i, p in enumerate(goods)]
    copies = work / "copies"
    copies.mkdir()
    for i, src in enumerate(goods[:5]):
        rgb = read_image(src)
        for k, (img, quality) in enumerate(((rgb, 92), (rgb, 91), (np.roll(rgb, 1, axis=1), 92),
                                            (np.roll(rgb, 1, axis=0), 91))):
            path = copies / f"{i}-{k}.jpg"
            buf = io.BytesIO()
            Image.fromarray(img).save(buf, "JPEG", quality=quality)
            path.write_bytes(buf.getvalue())
            out.append((path, "cam-1", T0 + dt.timedelta(minutes=3 * i, seconds=k + 1)))
    out += [(p, "cam-1", T0 + dt.timedelta(minutes=80 + i)) for i, p in enumerate(defects)]
    held_out = [(s.path, s.is_defect) for s in bottle.test if s.path not in defects]
    return out, defects, held_out


def _keep(engine, scorer, frames, image_root: Path) -> None:
    """Kept frames with their real v1 scores, all labelled good by one operator."""
    from sqlalchemy import insert

    from linewatch.contracts.labels import record_labels
    from linewatch.contracts.schema import Inspection
    from linewatch.detector.imaging import read_image

    folder = image_root / "line-1" / "cam-1"
    folder.mkdir(parents=True, exist_ok=True)
    with engine.begin() as conn:
        for i, (path, camera, at) in enumerate(frames):
            kept = folder / f"{i:03d}{path.suffix}"
            shutil.copyfile(path, kept)
            score = float(scorer.score_images([read_image(kept)]).image_scores[0])
            row = conn.execute(insert(Inspection).values(
                camera_id=camera, line_id="line-1", frame_id=i, captured_at=at, processed_at=at, model_version="v1",
                image_score=score, normalized_score=score / scorer.image_threshold,
                verdict="defect" if score > scorer.image_threshold else "good", threshold=scorer.image_threshold,
                regions=[], width=900, height=900, queue_wait_ms=0, decode_ms=0, inference_ms=0, total_ms=0,
                worker_id="bench", image_uri=kept.as_uri()).returning(Inspection.id)).scalar_one()
            record_labels(conn, [row], "good", "alice", at)  # the one write path of labels


def run_label_noise(args, root: Path) -> int:
    from linewatch.contracts.database import make_engine, migrate
    from linewatch.contracts.settings import Settings
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.imaging import read_image
    from linewatch.detector.scoring import Scorer
    from linewatch.detector.training import TrainConfig, train
    from linewatch.trainer import job_queue as jobs
    from linewatch.trainer.job import run_job
    from linewatch.trainer.promotion import LabelledFrame, judge
    from linewatch.trainer.registry import ModelRegistry, artifact_path

    bottle = open_dataset(Settings().data_root / "mvtec_ad" / "bottle")
    work = Path(tempfile.mkdtemp(prefix="linewatch-label-noise-"))
    size = args.image_size or 128
    try:
        t0 = time.monotonic()
        v1_dir = train(bottle.train[: args.base], work / "v1", TrainConfig(
            image_size=size, epochs=args.base_epochs, batch_size=8, device="cpu"), progress=False).model_dir
        base_s = time.monotonic() - t0
        frames, defects, held_out = _frames(bottle, work)
        v1 = Scorer(v1_dir, "cpu")
        held = [LabelledFrame(p, d) for p, d in held_out]
        rows = [{"model": "v1 (before)", "trained_on": args.base, "outcome": "active", **judge(v1, held)}]
        defect_scores = [f"{v1.score_images([read_image(p)]).normalized[0]:.2f}" for p in defects]
        defect_names = {f"{i:03d}.png" for i in range(len(frames) - len(defects), len(frames))}  # as kept
        for name, guards in (("guards on", {}), ("guards off", GUARDS_OFF)):
            state = work / name.replace(" ", "-")
            settings = Settings(state_dir=state, database={"url": f"sqlite:///{state / 'db.sqlite'}"},
                                detector={"device": "cpu"}, training={"batch_size": 8},
                                trainer={"fine_tune_epochs": args.fine_tune_epochs, **guards})
            state.mkdir()
            engine = make_engine(settings.database_url)
            migrate(engine)
            registry = ModelRegistry(engine, settings.artifact_store_root, None)
            registry.use(v1_dir, "bench")
            _keep(engine, v1, frames, settings.image_store_root)
            job_id = jobs.request_job(engine, "manual", "bench")
            jobs.claim_next(engine, 0)
            t0 = time.monotonic()
            if run_job(settings, job_id) != 0:
                raise RuntimeError(f"retraining failed: {jobs.get_job(engine, job_id).error}")
            job = jobs.get_job(engine, job_id)
            row = registry.get(job.candidate_version)
            roles = [m["role"] for m in row.manifest]
            trained_defects = sum(1 for m in row.manifest
                                  if m["role"] in ("train", "val") and Path(m["path"]).name in defect_names)
            rows.append({"model": f"v2, {name}", "trained_on": roles.count("train") + roles.count("val"),
                         "dropped": roles.count("dropped"), "held_out": roles.count("held_out"),
                         "defects_trained": trained_defects, "retrain_s": round(time.monotonic() - t0, 1),
                         "outcome": f"{job.stage}: {row.metrics['decision']}",
                         **judge(Scorer(artifact_path(row), "cpu"), held)})
            engine.dispose()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"v1: {args.base} good bottles, {args.base_epochs} epochs at {size} px, {base_s:.0f} s; v1 scores of the "
          f"5 mistaken defects (x threshold): {', '.join(defect_scores)}")
    print(_table(rows))
    out = args.out or root / "bench" / "results" / "retrain_label_noise.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2, default=str))
    print(f"\nwritten to {out}")
    return 0


def _table(rows: list[dict]) -> str:
    head = ("| model | images trained on | left out (dropped / held out) | mistaken defects trained on | "
            "held-out image AUROC | false rejects | misses | outcome |")
    lines = [head, "|" + " --- |" * 8]
    for r in rows:
        left = f"{r.get('dropped', '')} / {r.get('held_out', '')}" if "dropped" in r else ""
        lines.append(f"| {r['model']} | {r['trained_on']} | {left} | {r.get('defects_trained', '')} | "
                     f"{r['image_auroc']:.3f} | {r['false_rejects']}/{r['good']} | {r['misses']}/{r['defect']} | "
                     f"{r['outcome']} |")
    return "\n".join(lines)
