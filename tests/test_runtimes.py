"""Inference runtimes (issue 17): the ONNX export reproduces eager PyTorch at float32, on a real trained model and on
real images (held-out goods, defective bottles, the red/blue asymmetric image of field case c10); the runtime choice;
exports that no longer fit their model are refused, never scored with."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest

from linewatch.detector.imaging import read_image
from linewatch.detector.model_files import ModelFileError, read_metadata, write_metadata
from linewatch.detector.runtimes.onnx_export import export_onnx
from linewatch.detector.runtimes.parity import PARITY_TOLERANCE, compare, held_out_inputs
from linewatch.detector.scoring import Scorer

from datasets import bottle, field_case


@pytest.fixture(scope="module")
def exported(quick_model, tmp_path_factory):
    """A copy of the quick model (the session's own stays without an export) with its ONNX export."""
    model_dir = tmp_path_factory.mktemp("exported") / "bottle-quick"
    shutil.copytree(quick_model.model_dir, model_dir)
    export_onnx(model_dir)
    return model_dir


def _real_images(scorer: Scorer) -> np.ndarray:
    """The model's held-out goods, the c10 red/blue image, and defective and good bottles of the test set."""
    goods = held_out_inputs(read_metadata(scorer.model.path), scorer.windows, limit=64)
    paths = [field_case("c10_train_serve_parity") / "redblue_asym_seed200.jpg",
             *sorted((bottle() / "test" / "broken_large").glob("*.png"))[:3],
             *sorted((bottle() / "test" / "contamination").glob("*.png"))[:2],
             *sorted((bottle() / "test" / "good").glob("*.png"))[:2]]
    others = np.concatenate([scorer.windows(read_image(p)) for p in paths])
    assert goods is not None and len(goods) == 5  # all of the quick model's held-out goods are readable here
    return np.concatenate([goods, others])


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_export_runtimes_match_eager_pytorch_at_float32(exported, runtime):
    eager = Scorer(exported, "cpu", runtime="torch")
    onnx = Scorer(exported, "cpu", runtime=runtime)
    assert (eager.runtime, onnx.runtime) == ("torch", runtime)
    images = _real_images(eager)
    for batch in (images[:1], images[:4], images, images[:4]):  # the batch axis is dynamic
        expected, got = eager.score(batch), onnx.score(batch)
        parity = compare((expected.image_scores, expected.anomaly_maps), (got.image_scores, got.anomaly_maps), "")
        assert parity.score_rel <= 1e-5 and parity.map_rel <= 1e-5, parity
        assert np.array_equal(expected.is_defect, got.is_defect)
        assert got.anomaly_maps.dtype == np.float32 and got.anomaly_maps.shape == (len(batch), 1, 128, 128)
    # c10's image alone: the red/blue asymmetry would show a swapped channel order at once
    c10 = images[5:6]
    assert onnx.score(c10).image_scores[0] == pytest.approx(eager.score(c10).image_scores[0], rel=1e-5)
    swapped = eager.score(c10[:, ::-1].copy()).image_scores[0]
    assert abs(swapped / eager.score(c10).image_scores[0] - 1) > 1e-3  # ...which would be far outside 1e-5


def test_the_export_is_recorded_with_its_checksum_and_parity(exported):
    from linewatch.contracts.files import sha256_file

    meta = read_metadata(exported)
    record = meta["exports"]["onnx"]
    assert record["file"] == "model.onnx" and record["sha256"] == sha256_file(exported / "model.onnx")
    assert record["weights_sha256"] == meta["weights_sha256"]
    assert record["input"] == {"name": "images", "dtype": "uint8", "shape": ["batch", 3, 128, 128]}
    assert set(record["parity"]) == {"onnxruntime", "openvino"}
    for parity in record["parity"].values():
        assert parity["passed"] and parity["on"] == "held-out goods" and parity["images"] == 5
        assert parity["score_rel"] <= PARITY_TOLERANCE and parity["map_rel"] <= PARITY_TOLERANCE


def test_auto_picks_a_runtime_that_matches_and_says_which(exported, quick_model, caplog):
    caplog.set_level(logging.INFO, logger="linewatch.detector.runtimes.selection")
    auto = Scorer(exported, "cpu", runtime="auto")
    assert auto.runtime in ("onnxruntime", "openvino", "torch")  # the fastest here and now (load decides)
    line = next(r.getMessage() for r in caplog.records if "runtime auto" in r.getMessage())
    assert f"runtime auto: {auto.runtime}" in line and "5 held-out goods" in line
    images = _real_images(auto)
    expected = Scorer(exported, "cpu", runtime="torch").score(images)
    assert np.allclose(auto.score(images).image_scores, expected.image_scores, rtol=1e-5, atol=0)
    caplog.clear()
    assert Scorer(quick_model.model_dir, "cpu", runtime="auto").runtime == "torch"  # no export: eager PyTorch
    assert any("has no export" in r.getMessage() for r in caplog.records)


def test_an_export_that_does_not_fit_its_model_is_never_used(exported, quick_model, tmp_path, caplog):
    tampered = tmp_path / "tampered"
    shutil.copytree(exported, tampered)
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="does not match the SHA-256"):
        Scorer(tampered, "cpu", runtime="onnxruntime")
    assert Scorer(tampered, "cpu", runtime="auto").runtime == "torch"
    # exported from other weights (a model.json carried over to a retrained student, say)
    stale = tmp_path / "stale"
    shutil.copytree(exported, stale)
    meta = read_metadata(stale)
    meta["exports"]["onnx"]["weights_sha256"] = "0" * 64
    write_metadata(stale, meta)
    with pytest.raises(ModelFileError, match="exported from other weights"):
        Scorer(stale, "cpu", runtime="onnxruntime")
    with pytest.raises(ModelFileError, match="linewatch export"):
        Scorer(quick_model.model_dir, "cpu", runtime="onnxruntime")


def registered_after_a_broken_copy(model_dir, damaged: str, sqlite_url: str, tmp_path):
    """Register a copy of ``model_dir`` whose export file ``damaged`` holds other bytes (refused, naming the file),
    then ``model_dir`` itself; returns the registered row and its artifact folder. For every export format."""
    from linewatch.contracts.database import make_engine, migrate
    from linewatch.trainer.registry import ModelRegistry, artifact_path

    engine = make_engine(sqlite_url)
    migrate(engine)
    registry = ModelRegistry(engine, tmp_path / "models", None)
    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    (broken / damaged).write_bytes(b"not the export")
    with pytest.raises(ModelFileError, match=f"{damaged}: content does not match"):
        registry.register(broken)
    row = registry.register(model_dir)
    engine.dispose()
    return row, artifact_path(row)


def test_the_registry_ships_the_export_and_refuses_a_broken_one(exported, sqlite_url, tmp_path):
    from linewatch.detector.model_files import export_path

    row, folder = registered_after_a_broken_copy(exported, "model.onnx", sqlite_url, tmp_path)
    assert export_path(folder, read_metadata(folder), "onnx") == folder / "model.onnx"
    assert Scorer(folder, "cpu", runtime="onnxruntime").version == row.version


def test_export_and_score_commands(exported, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(exported, model_dir)
    (model_dir / "model.onnx").unlink()
    meta = read_metadata(model_dir)
    del meta["exports"]
    write_metadata(model_dir, meta)
    run = subprocess.run([sys.executable, "-m", "linewatch", "export", "--model", str(model_dir), "--format", "onnx"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "matches eager PyTorch on 5 held-out goods" in run.stdout and (model_dir / "model.onnx").is_file()
    image = field_case("c10_train_serve_parity") / "redblue_asym_seed200.jpg"
    lines = {}
    # the two scorings at once: most of each is the command's start-up
    scoring = {runtime: subprocess.Popen([sys.executable, "-m", "linewatch", "score", "--model", str(model_dir),
                                          "--runtime", runtime, str(image)], stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True) for runtime in ("torch", "onnxruntime")}
    for runtime, proc in scoring.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
        lines[runtime] = json.loads(stdout)
    assert lines["onnxruntime"]["runtime"] == "onnxruntime"
    assert lines["onnxruntime"]["image_score"] == pytest.approx(lines["torch"]["image_score"], rel=1e-5)
    assert lines["onnxruntime"]["verdict"] == lines["torch"]["verdict"]


@pytest.mark.services
def test_a_worker_scores_with_the_export_as_eager_pytorch_would(exported, apache_kafka, redis_url, sqlite_url,
                                                                  tmp_path):
    from linewatch.contracts.live_state import LiveStateReader

    from pipeline_harness import Pipeline

    folder = bottle() / "test" / "broken_large"
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, sqlite_url, tmp_path / "state", exported)
    try:
        counters = p.publish_folder(folder)
        p.start("w1", "detect", "--model", str(exported), "--runtime", "onnxruntime")
        n = counters.published
        assert p.wait_for_rows(n) == n
        p.wait_for_workers(1)  # the first heartbeat comes 2 s after the loop starts, which can be after the rows
        (beat,) = [w for w in LiveStateReader(p.redis).workers() if w["alive"]]
        assert beat["runtime"] == "onnxruntime"
        rows = p.rows()
        eager = Scorer(exported, "cpu", runtime="torch")
        offline = eager.score(np.concatenate([eager.windows(read_image(folder / r.part_id)) for r in rows]))
        for r, score, defect in zip(rows, offline.image_scores, offline.is_defect, strict=True):
            assert r.image_score == pytest.approx(float(score), rel=1e-5), r.part_id
            assert r.verdict == ("defect" if defect else "good"), r.part_id
        assert p.stop_workers() == {"w1": 0}
    finally:
        p.close()
