"""Training on real bottle images (briefly, small), the model directory, and scoring."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from linewatch.detector.datasets import open_dataset
from linewatch.detector.evaluation import evaluate
from linewatch.detector.imaging import read_image
from linewatch.detector.model_files import METADATA_FILE, WEIGHTS_FILE, ModelFileError, load_model
from linewatch.detector.scoring import Scorer
from linewatch.detector.training import TrainConfig, TrainingError, train

from datasets import bottle

# quick_model (conftest): 24 good training images; tests use 6 good and 6 defective test images.

def test_model_directory_holds_weights_and_complete_metadata(quick_model):
    meta = json.loads((quick_model.model_dir / METADATA_FILE).read_text())
    assert meta["backbone"] == "efficientnet_lite0"
    assert len(meta["teacher_weights"]["sha256"]) == 64
    assert meta["image_size"] == 128 and meta["normalization"]["mean"] == [0.5, 0.5, 0.5]
    assert meta["pyramid"] == {"strides": [4, 8, 16], "channels": [24, 40, 112]}
    assert len(meta["manifest"]) == 24 and sum(m["role"] == "val" for m in meta["manifest"]) == 5
    assert all(len(m["sha256"]) == 64 for m in meta["manifest"])
    assert meta["training"]["epochs"] == 8 and len(meta["training"]["history"]) == 8
    assert 1 <= meta["training"]["best_epoch"] <= 8
    assert meta["thresholds"]["image"] > meta["thresholds"]["pixel"] > 0
    assert meta["validation"]["image_score"]["count"] == 5
    tensors = load_file(str(quick_model.model_dir / WEIGHTS_FILE))
    assert any(k.startswith("body.conv_stem") for k in tensors)


def test_defective_bottles_score_above_good_ones(quick_model):
    ds = open_dataset(bottle())
    good = [s for s in ds.test if not s.is_defect][:6]
    defect = [s for s in ds.test if s.is_defect][::10][:6]
    scorer = Scorer(quick_model.model_dir, "cpu")
    batch = np.concatenate([scorer.prepare(read_image(s.path)).tiles for s in good + defect])  # square: 1 each
    scores = scorer.score(batch)
    good_scores, defect_scores = scores.image_scores[:6], scores.image_scores[6:]
    assert defect_scores.mean() > 2 * good_scores.mean()
    assert defect_scores.min() > good_scores.max()
    assert scores.anomaly_maps.shape == (12, 1, 128, 128)
    assert np.allclose(scores.normalized, scores.image_scores / scorer.image_threshold, rtol=1e-6)


def test_same_seed_same_model(tmp_path):
    ds = open_dataset(bottle())
    config = TrainConfig(image_size=64, epochs=2, batch_size=4, seed=3, device="cpu", allow_under_calibrated=True)
    a = train(ds.train[:10], tmp_path / "a", config, progress=False)
    b = train(ds.train[:10], tmp_path / "b", config, progress=False)
    assert a.metadata["weights_sha256"] == b.metadata["weights_sha256"]
    c = train(ds.train[:10], tmp_path / "c", TrainConfig(**{**config.__dict__, "seed": 4}), progress=False)
    assert c.metadata["weights_sha256"] != a.metadata["weights_sha256"]


def test_tampered_or_foreign_models_are_refused(quick_model, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(quick_model.model_dir, copy)
    meta = json.loads((copy / METADATA_FILE).read_text())
    meta["teacher_weights"]["sha256"] = "0" * 64
    (copy / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="trained against teacher weights"):
        load_model(copy)
    with open(copy / WEIGHTS_FILE, "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02")
    with pytest.raises(ModelFileError, match="does not match the SHA-256"):
        load_model(copy)
    with pytest.raises(ModelFileError, match="not a linewatch model"):
        load_model(tmp_path)


def test_evaluation_report_on_a_subset(quick_model, tmp_path):
    ds = open_dataset(bottle())
    ds.test = [s for s in ds.test if s.label == "good"][:4] + [s for s in ds.test if s.label == "broken_large"][:4]
    report = evaluate(Scorer(quick_model.model_dir, "cpu"), ds, maps_dir=tmp_path / "maps", progress=False)
    overall = report["overall"]
    assert overall["images"] == 8 and report["dataset"]["defective"] == 4
    assert 0.5 < overall["image_auroc"] <= 1.0 and 0.5 < overall["pixel_auroc"] <= 1.0
    assert 0.0 < overall["au_pro"] <= 1.0
    assert set(report["per_defect_type"]) == {"broken_large"}
    overlays = sorted(p.relative_to(tmp_path / "maps").as_posix() for p in (tmp_path / "maps").rglob("*.png"))
    assert overlays == [f"broken_large/00{i}.png" for i in range(4)] + [f"good/00{i}.png" for i in range(4)]


def test_too_few_images_is_a_clear_error(tmp_path):
    ds = open_dataset(bottle())
    with pytest.raises(TrainingError, match="at least 2 good images"):
        train(ds.train[:1], tmp_path / "m", TrainConfig(epochs=1, device="cpu"), progress=False)


def test_scorer_rejects_wrong_input(quick_model):
    scorer = Scorer(quick_model.model_dir, "cpu")
    with pytest.raises(ValueError, match="expected uint8"):
        scorer.score(torch.zeros(1, 3, 128, 128))


def test_a_stop_request_ends_training_within_the_epoch_and_writes_nothing(tmp_path):
    import threading

    from linewatch.detector.training import TrainingStopped

    stop = threading.Event()
    reports = []

    def on_epoch(report):
        reports.append(report.epoch)
        stop.set()  # as a SIGTERM handler would, during epoch 2's batches

    ds = open_dataset(bottle())
    config = TrainConfig(image_size=64, epochs=50, batch_size=2, seed=3, device="cpu", allow_under_calibrated=True)
    with pytest.raises(TrainingStopped, match="epoch 2 of 50"):
        train(ds.train[:10], tmp_path / "m", config, progress=False, on_epoch=on_epoch, stop=stop)
    assert reports == [1]
    assert not (tmp_path / "m").exists()


def test_a_folder_that_is_not_a_model_is_refused_before_training(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "notes.txt").write_text("mine")
    ds = open_dataset(bottle())
    with pytest.raises(ModelFileError, match="not empty and not a model directory"):
        train(ds.train[:10], tmp_path / "m", TrainConfig(image_size=64, epochs=50, device="cpu"), progress=False)
    assert (tmp_path / "m" / "notes.txt").read_text() == "mine"
