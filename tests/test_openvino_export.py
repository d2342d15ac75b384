"""OpenVINO IR exports (issue 17): at fp32 the IR scores as eager PyTorch does (<= 1e-5 on real images); bf16 and
int8 are opt-in, their thresholds recalibrated on the held-out goods by the training's rule and recorded with their
shift from float32 and their verdict flips; the registry ships the IR and refuses a broken one."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from test_runtimes import registered_after_a_broken_copy

from linewatch.contracts.files import sha256_file
from linewatch.detector.calibration import calibrate_thresholds
from linewatch.detector.imaging import read_image
from linewatch.detector.model_files import read_metadata
from linewatch.detector.runtimes import RuntimeChoiceError
from linewatch.detector.runtimes.openvino_export import export_openvino
from linewatch.detector.runtimes.openvino_runtime import warm_up_sizes
from linewatch.detector.runtimes.parity import compare, held_out_inputs, readable_goods
from linewatch.detector.scoring import Scorer, frame_scores

from datasets import bottle, field_case


@pytest.fixture(scope="module")
def ir_model(quick_model, tmp_path_factory):
    """A copy of the quick model with its OpenVINO IR at fp32, bf16 and int8 (about 2 min on 2 shared cores)."""
    model_dir = tmp_path_factory.mktemp("openvino") / "bottle-quick"
    shutil.copytree(quick_model.model_dir, model_dir)
    for precision in ("fp32", "bf16", "int8"):
        export_openvino(model_dir, precision)
    return model_dir


def _test_images(scorer: Scorer) -> np.ndarray:
    """The c10 red/blue image, 4 defective and 3 good bottles of the test set, as model inputs."""
    paths = [field_case("c10_train_serve_parity") / "redblue_asym_seed200.jpg",
             *sorted((bottle() / "test" / "broken_large").glob("*.png"))[:2],
             *sorted((bottle() / "test" / "contamination").glob("*.png"))[:2],
             *sorted((bottle() / "test" / "good").glob("*.png"))[:3]]
    return np.concatenate([scorer.windows(read_image(p)) for p in paths])


def test_the_fp32_ir_scores_as_eager_pytorch_and_is_what_openvino_loads(ir_model):
    eager = Scorer(ir_model, "cpu", runtime="torch")
    ir = Scorer(ir_model, "cpu", runtime="openvino")
    assert ir.runtime == "openvino" and ir.image_threshold == eager.image_threshold
    goods = held_out_inputs(read_metadata(ir_model), eager.windows, limit=64)
    images = np.concatenate([goods, _test_images(eager)])
    for batch in (images[:1], images, images[:5]):  # dynamic batch axis
        expected, got = eager.score(batch), ir.score(batch)
        parity = compare((expected.image_scores, expected.anomaly_maps), (got.image_scores, got.anomaly_maps), "")
        assert parity.score_rel <= 1e-5 and parity.map_rel <= 1e-5, parity
        assert np.array_equal(expected.is_defect, got.is_defect)
    meta = read_metadata(ir_model)
    record = meta["exports"]["openvino"]
    assert (record["file"], record["data_file"], record["precision"]) == ("model.xml", "model.bin", "fp32")
    assert record["sha256"] == sha256_file(ir_model / "model.xml")
    assert record["data_sha256"] == sha256_file(ir_model / "model.bin")
    assert record["weights_sha256"] == meta["weights_sha256"] and record["executes"] == "f32"
    parity = record["parity"]["openvino"]
    assert parity["passed"] and parity["images"] == 5 and parity["on"] == "held-out goods"
    assert parity["score_rel"] <= 1e-5 and parity["map_rel"] <= 1e-5
    # the weights are stored at float32 (OpenVINO's save_model would halve them by default)
    assert (ir_model / "model.bin").stat().st_size > 4 * 1_000_000


def test_warming_up_runs_every_batch_size_once_and_changes_no_score(ir_model):
    """A worker warms OpenVINO up at load, so no frame pays a batch size's first call (bench/README.md, Latency)."""
    scorer = Scorer(ir_model, "cpu", precision="float32", runtime="openvino")
    images = _test_images(scorer)[:3]
    before = scorer.score(images)
    assert scorer._forward.warm_up(4, scorer.image_size) == [4, 3, 2, 1]
    assert scorer.warm_up(3) > 0.0
    after = scorer.score(images)
    np.testing.assert_array_equal(after.image_scores, before.image_scores)
    np.testing.assert_array_equal(after.anomaly_maps, before.anomaly_maps)
    assert Scorer(ir_model, "cpu", precision="float32", runtime="torch").warm_up(3) == 0.0  # eager: nothing to do


def test_warm_up_sizes_are_the_largest_then_each_up_to_sixteen():
    assert warm_up_sizes(1) == [1]
    assert warm_up_sizes(4) == [4, 3, 2, 1]
    assert warm_up_sizes(16) == list(range(16, 0, -1))
    assert warm_up_sizes(64) == [64, *range(16, 0, -1)]  # the square of 64 would take about 40 s
    assert warm_up_sizes(0) == [1]


def test_a_worker_warms_its_openvino_model_up_when_it_loads_it(ir_model, caplog):
    from linewatch.contracts.settings import Settings
    from linewatch.detector.stream.worker import DetectorWorker

    with caplog.at_level(logging.INFO, logger="linewatch.detector.stream.worker"):
        worker = DetectorWorker(Settings(detector={"runtime": "openvino", "max_batch": 3}), ir_model, threads=1)
    assert worker.models.first().current.runtime == "openvino"
    assert any("openvino warmed up for batches up to 3 in" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_has_its_own_thresholds_recalibrated_by_the_training_rule(ir_model, precision):
    runtime = f"openvino-{precision}"
    meta = read_metadata(ir_model)
    record = meta["exports"][runtime]
    assert record["precision"] == precision and record["file"] == f"model-{precision}.xml"
    scorer = Scorer(ir_model, "cpu", runtime=runtime)
    # the thresholds are the rule applied to the held-out goods as this runtime scores them, recomputed here
    frames = [scorer.prepare(rgb) for _, rgb in readable_goods(meta, "val")]
    scores, maps = frame_scores(scorer.model.stpm, frames, scorer.device, forward=scorer._forward)[:2]
    exact, _ = frame_scores(scorer.model.stpm, frames, scorer.device, "float32")[:2]
    t = meta["thresholds"]
    expected = calibrate_thresholds(scores, maps, t["target_false_reject_rate"], t["pixel_false_positive_rate"], 100)
    assert record["thresholds"]["image"] == pytest.approx(expected["image"], rel=1e-6)
    assert record["thresholds"]["pixel"] == pytest.approx(expected["pixel"], rel=1e-6)
    assert (scorer.image_threshold, scorer.pixel_threshold) == (record["thresholds"]["image"],
                                                                record["thresholds"]["pixel"])
    shift = record["against_float32"]
    assert shift["held_out_goods"] == 5 and shift["float32_threshold"] == t["image"]
    assert shift["max_score_shift"] == pytest.approx(float(np.max(np.abs(scores / exact - 1))), rel=1e-3, abs=1e-7)
    assert shift["verdict_flips"] == 0  # by the rule: each threshold is at least its highest held-out good
    if precision == "bf16":
        # this CPU (AMD EPYC, no AVX512_BF16, no AMX) has no bf16: OpenVINO runs the hint at f32, and says so
        has_bf16 = "BF16" in record["cpu"]["capabilities"]
        assert record["executes"] == ("bf16" if has_bf16 else "f32")
        if not has_bf16:
            assert shift["max_score_shift"] <= 1e-5
    else:
        assert record["quantisation"]["calibration_images"] == 19  # the quick model's training goods
        # int8 moves the scores by percents, not float32 noise: the reason its thresholds are its own
        assert 1e-3 < shift["max_score_shift"] < 0.5
        assert record["thresholds"]["image"] != pytest.approx(t["image"], rel=1e-3)
    # verdicts on defective and good bottles: each precision at its own thresholds, flips counted
    eager = Scorer(ir_model, "cpu", runtime="torch")
    images = _test_images(eager)
    flips = int(np.sum(eager.score(images).is_defect != scorer.score(images).is_defect))
    print(f"{runtime}: {flips} verdict flips of {len(images)} test images, max score shift on the held-out goods "
          f"{shift['max_score_shift']:.2e}")
    assert flips <= (0 if precision == "bf16" else 2)


def test_reduced_precision_is_opt_in_and_refused_when_this_cpu_would_run_it_otherwise(ir_model, tmp_path):
    assert Scorer(ir_model, "cpu", runtime="auto").runtime in ("torch", "onnxruntime", "openvino")
    moved = tmp_path / "m"
    shutil.copytree(ir_model, moved)
    from linewatch.detector.model_files import write_metadata

    meta = read_metadata(moved)
    meta["exports"]["openvino-bf16"]["executes"] = "bf16"  # as if calibrated on a processor with bf16
    write_metadata(moved, meta)
    executes = meta["exports"]["openvino-int8"]["cpu"]["capabilities"]
    if "BF16" not in executes:
        with pytest.raises(RuntimeChoiceError, match="export it again here"):
            Scorer(moved, "cpu", runtime="openvino-bf16")
    with pytest.raises(RuntimeChoiceError, match="on the CPU"):
        Scorer(moved, "cpu", precision="bfloat16", runtime="openvino-int8")


def test_the_registry_ships_the_ir_and_refuses_a_broken_one(ir_model, sqlite_url, tmp_path):
    from linewatch.detector.model_files import export_paths

    row, folder = registered_after_a_broken_copy(ir_model, "model-int8.bin", sqlite_url, tmp_path)
    assert set(export_paths(folder, read_metadata(folder))) == {"openvino", "openvino-bf16", "openvino-int8"}
    shipped = Scorer(folder, "cpu", runtime="openvino-int8")
    assert shipped.version == row.version
    assert shipped.image_threshold == read_metadata(ir_model)["exports"]["openvino-int8"]["thresholds"]["image"]


def test_export_command_for_openvino(ir_model, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(ir_model, model_dir)
    run = subprocess.run([sys.executable, "-m", "linewatch", "export", "--model", str(model_dir), "--format", "onnx",
                          "--precision", "int8"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 2 and "for --format openvino" in run.stderr
    run = subprocess.run([sys.executable, "-m", "linewatch", "export", "--model", str(model_dir), "--format",
                          "openvino", "--precision", "bf16"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "thresholds recalibrated on 5 held-out goods" in run.stdout and "verdict flips 0" in run.stdout
