"""The global branch (linewatch.detector.global_branch): a Ledoit-Wolf Gaussian of pooled teacher features whose
Mahalanobis distance is fused with STPM's image score. Its distances against scipy's, a model without it scoring
bit for bit as before, the same fused score from the Scorer, `linewatch score` and a worker's scoring step, and
its ONNX export matching eager PyTorch."""

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from scipy.spatial.distance import mahalanobis
from sklearn.covariance import LedoitWolf

from linewatch.contracts.files import sha256_file
from linewatch.contracts.messages import FrameMeta
from linewatch.detector import model_files
from linewatch.detector.global_branch import (
    GLOBAL_FILE,
    MEAN,
    MEAN_STD,
    GlobalGaussian,
    branch_file_name,
    fit_gaussian,
    is_branch_file,
    pooled_features,
    read_branch,
    save_branch,
)
from linewatch.detector.global_fit import add_global_branch, teacher_pooled
from linewatch.detector.imaging import read_image
from linewatch.detector.model_files import METADATA_FILE, ModelFileError, load_model
from linewatch.detector.runtimes.onnx_export import export_onnx
from linewatch.detector.runtimes.openvino_export import export_openvino
from linewatch.detector.scoring import Scorer
from linewatch.detector.stpm import combine_maps, image_scores, normalize_features, smooth_map, stage_maps
from linewatch.detector.stream.batches import PreparedFrame, RawFrame
from linewatch.detector.stream.frames import prepare_frame
from linewatch.detector.stream.inspection import score_batch

from datasets import bottle

IMAGES = [bottle() / "test" / "good" / "000.png", bottle() / "test" / "broken_large" / "000.png",
          bottle() / "test" / "contamination" / "003.png"]


@pytest.fixture(scope="module")
def global_model(quick_model, tmp_path_factory):
    """``quick_model`` (trained without the branch) given one by ``add_global_branch`` (``linewatch fit-global``)."""
    model_dir = tmp_path_factory.mktemp("global") / "bottle-quick-global"
    shutil.copytree(quick_model.model_dir, model_dir)
    add_global_branch(model_dir, "cpu")
    return model_dir


def test_distances_of_a_known_gaussian_match_scipy():
    rng = np.random.default_rng(0)
    d = 6
    a = rng.normal(size=(d, d))
    cov = a @ a.T + d * np.eye(d)
    mean = rng.normal(size=d) * 3
    x = rng.multivariate_normal(mean, cov, size=4000)
    fitted_mean, precision, shrinkage = fit_gaussian(x)
    lw = LedoitWolf().fit(x)
    assert np.array_equal(fitted_mean, lw.location_) and np.array_equal(precision, lw.precision_)
    assert 0 <= shrinkage < 0.05  # 4000 samples of 6 dimensions: little shrinkage needed
    assert np.allclose(fitted_mean, mean, atol=0.2)
    branch = GlobalGaussian(fitted_mean, precision)
    probes = rng.multivariate_normal(mean, cov, size=50)
    # stages of 1x1 positions, split over two "stages": pooling is the identity, concatenation restores the vector
    stages = [torch.from_numpy(probes[:, :2, None, None]).float(), torch.from_numpy(probes[:, 2:, None, None]).float()]
    assert torch.equal(pooled_features(stages), torch.from_numpy(probes).float())
    got = branch(stages).numpy()
    expected = np.array([mahalanobis(p, fitted_mean, precision) for p in probes])
    assert np.allclose(got, expected, rtol=1e-5, atol=0)
    # under the true parameters, squared distances of Gaussian samples are chi-square with d degrees of freedom
    true = GlobalGaussian(mean, np.linalg.inv(cov))
    squared = true([torch.from_numpy(x[:, :, None, None]).float()]).numpy().astype(np.float64) ** 2
    assert squared.mean() == pytest.approx(d, rel=0.05)
    assert float(true([torch.from_numpy(mean[None, :, None, None]).float()])[0]) == pytest.approx(0, abs=1e-3)
    with pytest.raises(ValueError):
        fit_gaussian(x[:1])


def test_mean_and_std_pooling_matches_numpy():
    rng = np.random.default_rng(1)
    # an offset far above the spread: a one-pass E[x^2] - E[x]^2 would lose the standard deviation to cancellation
    stages = [rng.normal(300.0, 0.5, size=(3, 4, 8, 8)), rng.normal(0.0, 2.0, size=(3, 5, 4, 4))]
    got = pooled_features([torch.from_numpy(s).float() for s in stages], MEAN_STD).numpy()
    means = [s.mean(axis=(2, 3)) for s in stages]
    stds = [s.std(axis=(2, 3), ddof=0) for s in stages]
    assert got.shape == (3, 18)
    assert np.allclose(got, np.concatenate(means + stds, axis=1), rtol=1e-4, atol=0)
    assert np.array_equal(pooled_features([torch.from_numpy(s).float() for s in stages]).numpy(),
                          np.concatenate([m.astype(np.float32) for m in
                                          [torch.from_numpy(s).float().mean(dim=(2, 3)).numpy() for s in stages]], 1))
    with pytest.raises(ValueError, match="unknown global branch pooling"):
        pooled_features([torch.from_numpy(s).float() for s in stages], "median")


def test_a_branch_of_means_alone_from_before_scores_as_it_did(global_model, tmp_path):
    """A branch fitted before the standard deviations (``features.pooling`` "global average", 176 values) loads
    and scores with the means alone; a pooling this version does not know, or a branch of the wrong size for the
    teacher, is refused at load with the reason."""
    meta = json.loads((global_model / METADATA_FILE).read_text())
    goods = [read_image(m["path"]) for m in meta["manifest"] if m["role"] == "train"]
    scorer = Scorer(global_model, "cpu")
    windows = torch.from_numpy(np.concatenate([scorer.windows(rgb) for rgb in goods]))
    stpm = scorer.model.stpm
    mean, precision, _ = fit_gaussian(teacher_pooled(stpm, windows, torch.device("cpu"), pooling=MEAN))
    old_dir = tmp_path / "means-alone"
    shutil.copytree(global_model, old_dir)
    record = meta["global"]
    (old_dir / record["file"]).unlink()
    old = {**meta, "global": {**record, "features": {**record["features"], "pooling": MEAN, "dim": 176},
                              "file": GLOBAL_FILE, "sha256": save_branch(old_dir / GLOBAL_FILE, mean, precision)}}
    old.pop("exports", None)
    model_files.write_metadata(old_dir, old)
    loaded = Scorer(old_dir, "cpu")
    assert loaded.model.stpm.global_branch.pooling == MEAN and loaded.model.stpm.global_branch.dim == 176
    frames = [loaded.prepare(read_image(p)) for p in IMAGES]
    scored = loaded.score_frames(frames)
    with torch.inference_mode():
        stages = stpm.teacher(stpm.normalize_input(torch.from_numpy(np.concatenate([f.tiles for f in frames]))))
        features = pooled_features(stages).double().numpy()
    expected = np.array([mahalanobis(f, mean, precision) for f in features])
    assert np.allclose(scored.global_scores, expected, rtol=1e-4, atol=0)
    for features, why in (({**old["global"]["features"], "pooling": "median"}, "pooling 'median' is not one"),
                          ({**old["global"]["features"], "pooling": MEAN_STD}, "has 176 dimensions")):
        model_files.write_metadata(old_dir, {**old, "global": {**old["global"], "features": features}})
        with pytest.raises(ModelFileError, match=why):
            load_model(old_dir)


def test_a_model_without_the_branch_scores_bit_for_bit_as_before(quick_model):
    assert "global" not in quick_model.metadata
    scorer = Scorer(quick_model.model_dir, "cpu")
    assert scorer.model.stpm.global_branch is None
    frames = [scorer.prepare(read_image(p)) for p in IMAGES]
    scored = scorer.score_frames(frames)
    assert scored.local_scores is None and scored.global_scores is None
    # the computation before the branch existed, written out: Eqs. 1, 4, 5, smoothing, the map's maximum
    stpm = scorer.model.stpm
    with torch.inference_mode():
        x = stpm.normalize_input(torch.from_numpy(np.concatenate([f.tiles for f in frames])))
        amap = smooth_map(combine_maps(stage_maps(normalize_features(stpm.teacher(x)),
                                                  normalize_features(stpm.student(x))), tuple(x.shape[-2:])),
                          stpm.smoothing_sigma)
        before = image_scores(amap).numpy()
    assert np.array_equal(scored.image_scores, before)
    assert all(np.array_equal(m, a[0]) for m, a in zip(scored.maps, amap.numpy(), strict=True))
    out = scorer.score(np.concatenate([f.tiles for f in frames]))
    assert np.array_equal(out.image_scores, before) and out.global_scores is None


def test_the_branch_is_fit_on_training_goods_and_fuses_image_scores_only(quick_model, global_model):
    meta = json.loads((global_model / METADATA_FILE).read_text())
    record = meta["global"]
    train_n = sum(m["role"] == "train" for m in meta["manifest"])
    assert record["fitted_on"].startswith(f"{train_n} ") and record["estimator"] == "sklearn.covariance.LedoitWolf"
    # each stage's per-channel mean and standard deviation (the pooling fitted since 2026-12-02)
    assert record["features"]["pooling"] == MEAN_STD
    assert record["features"]["dim"] == 2 * sum(meta["pyramid"]["channels"]) == 352
    thresholds, before = meta["thresholds"], quick_model.metadata["thresholds"]
    threshold = thresholds["global"]  # set with STPM's by calibrate_thresholds, at the same target
    assert thresholds["global_calibration"]["target_false_reject_rate"] == before["target_false_reject_rate"]
    assert {k: v for k, v in thresholds.items() if not k.startswith("global")} == before  # STPM's are untouched
    old, new = Scorer(quick_model.model_dir, "cpu"), Scorer(global_model, "cpu")
    frames = [new.prepare(read_image(p)) for p in IMAGES]
    a, b = old.score_frames(frames), new.score_frames(frames)
    assert all(np.array_equal(x, y) for x, y in zip(a.maps, b.maps, strict=True))  # the anomaly map is unchanged
    assert np.array_equal(b.local_scores, a.image_scores)
    scale = thresholds["image"] / threshold
    assert new.model.stpm.global_branch.scale == pytest.approx(scale, rel=1e-12)
    assert np.allclose(b.image_scores, np.maximum(a.image_scores, b.global_scores * scale), rtol=1e-6, atol=0)
    assert np.allclose(b.normalized, np.maximum(a.image_scores / old.image_threshold,
                                                b.global_scores / threshold), rtol=1e-5, atol=0)
    # the held-out goods the threshold was set on stay below it, by the calibration rule
    held_out = [m["path"] for m in meta["manifest"] if m["role"] == "val"]
    goods = new.score_images([read_image(p) for p in held_out])
    assert (goods.global_scores <= threshold).all()
    # the fused score is now the image score: the score-drift reference is the held-out goods' fused scores
    assert meta["validation"]["image_score"]["max"] == pytest.approx(float(goods.image_scores.max()), rel=1e-5)
    assert meta["validation"]["image_score"]["p95"] >= quick_model.metadata["validation"]["image_score"]["p95"]
    # a changed branch file is refused like changed weights
    broken = global_model.parent / "broken"
    shutil.copytree(global_model, broken)
    with open(broken / record["file"], "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\x00\x00\x00\x00")
    with pytest.raises(ModelFileError, match="SHA-256"):
        load_model(broken)


def test_scorer_score_command_and_worker_agree_with_the_branch(global_model):
    scorer = Scorer(global_model, "cpu")
    path = IMAGES[2]
    expected = scorer.score_images([read_image(path)])
    out = subprocess.run([sys.executable, "-m", "linewatch", "score", "--model", str(global_model), "--device", "cpu",
                          "--runtime", "torch", str(path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    line = json.loads(out.stdout.strip().splitlines()[-1])
    meta = FrameMeta("cam-1", "line-1", 1, time.time_ns(), "image/png")
    frame = prepare_frame(RawFrame("t.frames", 0, 0, b"cam-1", path.read_bytes(), meta.headers()), scorer.geometry,
                          40_000_000)
    assert isinstance(frame, PreparedFrame)
    worker = score_batch(scorer, [frame], "w-test", keep_good=lambda _m: False).results[0]
    fused = float(expected.image_scores[0])
    print(f"scorer {fused:.7f} (stpm {expected.local_scores[0]:.7f}, global {expected.global_scores[0]:.5f}), "
          f"score {line['image_score']:.7f}, worker {worker.image_score:.7f}")
    assert line["image_score"] == pytest.approx(fused, rel=1e-5, abs=0)
    assert line["global_score"] == pytest.approx(float(expected.global_scores[0]), rel=1e-5, abs=0)
    assert worker.image_score == pytest.approx(fused, rel=1e-5, abs=0)
    assert worker.normalized_score == pytest.approx(float(expected.normalized[0]), rel=1e-5, abs=0)
    assert (worker.verdict == "defect") == bool(expected.is_defect[0]) == (line["verdict"] == "defect")


def test_the_onnx_export_outputs_the_fused_score_and_matches_eager_pytorch(global_model, tmp_path):
    model_dir = tmp_path / "m"
    shutil.copytree(global_model, model_dir)
    record = export_onnx(model_dir)
    assert list(record["outputs"]) == ["image_scores", "anomaly_maps", "global_scores"]
    parity = record["parity"]["onnxruntime"]
    print("onnxruntime parity:", parity)
    assert parity["passed"] and parity["global_rel"] <= 1e-5 and parity["score_rel"] <= 1e-5
    eager, onnx = Scorer(model_dir, "cpu", runtime="torch"), Scorer(model_dir, "cpu", runtime="onnxruntime")
    frames = [eager.prepare(read_image(p)) for p in IMAGES]
    a, b = eager.score_frames(frames), onnx.score_frames(frames)
    assert np.allclose(b.image_scores, a.image_scores, rtol=1e-5, atol=0)
    assert np.allclose(b.global_scores, a.global_scores, rtol=1e-5, atol=0)
    windows = np.concatenate([f.tiles for f in frames])
    wa, wb = eager.score(windows), onnx.score(windows)
    assert np.allclose(wb.image_scores, wa.image_scores, rtol=1e-5, atol=0)
    # fitting the branch again drops the export of the old one (export_path would refuse it: another global_sha256)
    add_global_branch(model_dir, "cpu")
    assert "onnx" not in json.loads((model_dir / METADATA_FILE).read_text()).get("exports", {})


def test_openvino_exports_carry_the_branch_and_int8_recalibrates_its_threshold(global_model, tmp_path):
    from linewatch.detector.calibration import calibrate_thresholds
    from linewatch.detector.runtimes.parity import readable_goods

    model_dir = tmp_path / "m"
    shutil.copytree(global_model, model_dir)
    meta = json.loads((model_dir / METADATA_FILE).read_text())
    fp32 = export_openvino(model_dir, "fp32")
    assert list(fp32["outputs"]) == ["image_scores", "anomaly_maps", "global_scores"]
    assert fp32["global_sha256"] == meta["global"]["sha256"]
    assert fp32["parity"]["openvino"]["passed"] and fp32["parity"]["openvino"]["global_rel"] <= 1e-5
    int8 = export_openvino(model_dir, "int8")
    t = int8["thresholds"]
    scorer = Scorer(model_dir, "cpu", runtime="openvino-int8")
    # every threshold, the global one too, is the rule on the held-out goods as the int8 IR scores them
    goods = scorer.score_images([rgb for _, rgb in readable_goods(meta, "val")])
    expected = calibrate_thresholds(goods.local_scores, goods.maps, t["target_false_reject_rate"],
                                    t["pixel_false_positive_rate"], t["calibration"]["needed_held_out_goods"],
                                    goods.global_scores)
    for key in ("image", "pixel", "global"):
        assert t[key] == pytest.approx(expected[key], rel=1e-6), key
    # fused with its own thresholds' scale, frame by frame and window by window
    scale = t["image"] / t["global"]
    assert scorer.model.stpm.global_branch.scale == pytest.approx(scale, rel=1e-12)
    assert np.allclose(goods.image_scores, np.maximum(goods.local_scores, goods.global_scores * scale), rtol=1e-6)
    assert not goods.is_defect.any()
    windows = np.concatenate([scorer.windows(read_image(p)) for p in IMAGES])
    out = scorer.score(windows)
    local = out.anomaly_maps.max(axis=(1, 2, 3))
    assert np.allclose(out.image_scores, np.maximum(local, out.global_scores * scale), rtol=1e-6, atol=0)
    print(f"int8: global threshold {t['global']:.4g} (float32 {meta['thresholds']['global']:.4g}), image "
          f"{t['image']:.4g} (float32 {meta['thresholds']['image']:.4g}); against float32 {int8['against_float32']}")
    # an export of the model before its branch was fitted again is refused, not scored with the wrong branch
    add_global_branch(model_dir, "cpu")
    assert not json.loads((model_dir / METADATA_FILE).read_text()).get("exports")


def test_training_fits_the_branch_by_default(tmp_path):
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.training import TrainConfig, train

    config = TrainConfig(image_size=64, epochs=1, batch_size=8, seed=3, device="cpu", allow_under_calibrated=True)
    result = train(open_dataset(bottle()).train[::10][:16], tmp_path / "m", config, progress=False)
    record = result.metadata["global"]
    assert (tmp_path / "m" / GLOBAL_FILE).is_file() and record["fitted_on"].startswith("13 ")  # 16 - 3 held out
    scorer = Scorer(tmp_path / "m", "cpu")
    assert scorer.model.stpm.global_branch is not None
    held_out = [m for m in result.metadata["manifest"] if m["role"] == "val"]
    scored = scorer.score_images([read_image(m["path"]) for m in held_out])
    assert np.allclose(scored.local_scores, [m["score"] for m in held_out], rtol=1e-5, atol=0)
    assert scored.global_scores.max() <= result.metadata["thresholds"]["global"]
    assert "threshold" not in record  # one home: thresholds.global
    off = train(open_dataset(bottle()).train[::10][:16], tmp_path / "off",
                TrainConfig(**{**config.__dict__, "global_branch": False}), progress=False)
    assert "global" not in off.metadata and not (tmp_path / "off" / GLOBAL_FILE).exists()


def test_fit_global_refuses_a_registered_version_in_the_artifact_store(tmp_path):
    """A registered version's files are what the workers load: fit-global must not change them in place."""
    state = tmp_path / "state"
    registered = state / "models" / "v3"
    registered.mkdir(parents=True)
    (registered / METADATA_FILE).write_text("{}")
    env = {**os.environ, "LINEWATCH_STATE_DIR": str(state)}
    done = subprocess.run([sys.executable, "-m", "linewatch", "fit-global", "--model", str(registered)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"error: {registered} is a registered model version (under the artifact store {state / 'models'})" \
        in " ".join(done.stderr.split())
    assert (registered / METADATA_FILE).read_text() == "{}" and not (registered / GLOBAL_FILE).exists()


def _branch_files(model_dir):
    return sorted(p.name for p in model_dir.iterdir() if is_branch_file(p.name))


def test_fit_global_swaps_the_branch_with_model_json_as_the_one_commit_point(global_model, tmp_path, monkeypatch):
    """fit-global writes the new Gaussian beside the one in use and commits by replacing model.json: a model of the
    layout before (``global.safetensors``, no ``file`` in its record) loads; a fit-global that dies before model.json
    is replaced leaves the old model loading with its old Gaussian; a reader between the commit and the old file's
    removal reads model.json again and gets the new one."""
    meta = json.loads((global_model / METADATA_FILE).read_text())
    record = meta["global"]
    assert record["file"] == branch_file_name(record["sha256"]) == f"global-{record['sha256'][:16]}.safetensors"
    assert _branch_files(global_model) == [record["file"]]
    assert sha256_file(global_model / record["file"]) == record["sha256"]
    fitted_mean, fitted_precision = read_branch(global_model, meta)

    # The layout before: global.safetensors, named by no "file"; here with a Gaussian unlike the one fit-global fits.
    old_dir = tmp_path / "old-layout"
    shutil.copytree(global_model, old_dir)
    (old_dir / record["file"]).unlink()
    old_mean = fitted_mean + 0.5
    old_meta = {**meta, "global": {k: v for k, v in record.items() if k != "file"}}
    old_meta["global"]["sha256"] = save_branch(old_dir / GLOBAL_FILE, old_mean, fitted_precision)
    model_files.write_metadata(old_dir, old_meta)
    old_json = (old_dir / METADATA_FILE).read_bytes()
    loaded = load_model(old_dir)
    assert np.array_equal(loaded.stpm.global_branch.mean.numpy(), old_mean.astype(np.float32))
    assert model_files.check_output_dir(global_model) == global_model.resolve()  # a model directory still

    # A fit-global that dies between writing the new file and replacing model.json.
    real_replace = os.replace
    seen = {}

    def dying_replace(src, dst):
        if os.path.basename(dst) == METADATA_FILE:
            seen["files"] = _branch_files(old_dir)  # the new file is there, beside the old one
            seen["mean"] = load_model(old_dir).stpm.global_branch.mean.numpy()  # a worker loading meanwhile
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(OSError, match="No space left"):
        add_global_branch(old_dir, "cpu")
    monkeypatch.setattr(os, "replace", real_replace)
    assert seen["files"] == sorted([GLOBAL_FILE, record["file"]])
    assert np.array_equal(seen["mean"], old_mean.astype(np.float32))
    assert (old_dir / METADATA_FILE).read_bytes() == old_json and _branch_files(old_dir) == [GLOBAL_FILE]
    assert np.array_equal(load_model(old_dir).stpm.global_branch.mean.numpy(), old_mean.astype(np.float32))

    # A reader that read model.json just before the commit and opens its branch file just after the removal.
    reader_dir = tmp_path / "reader"
    shutil.copytree(old_dir, reader_dir)
    real_read = model_files.read_metadata

    def read_then_commit(model_dir):
        before = real_read(model_dir)
        if before["global"].get("file") is None:  # the first read: fit-global commits and removes the old file
            shutil.copy(global_model / record["file"], model_dir / record["file"])
            model_files.write_metadata(model_dir, meta)
            (model_dir / GLOBAL_FILE).unlink()
        return before

    monkeypatch.setattr(model_files, "read_metadata", read_then_commit)
    again = load_model(reader_dir)
    monkeypatch.setattr(model_files, "read_metadata", real_read)
    assert again.metadata["global"] == record and again.metadata["thresholds"] == meta["thresholds"]
    assert np.array_equal(again.stpm.global_branch.mean.numpy(), fitted_mean.astype(np.float32))

    # The fit-global that completes: the new file named by model.json, the old one gone, the new Gaussian loaded.
    added = add_global_branch(old_dir, "cpu")
    assert added["file"] == branch_file_name(added["sha256"]) and _branch_files(old_dir) == [added["file"]]
    assert sha256_file(old_dir / added["file"]) == added["sha256"]
    assert json.loads((old_dir / METADATA_FILE).read_text())["global"] == added
    new_mean = load_model(old_dir).stpm.global_branch.mean.numpy()
    assert np.allclose(new_mean, fitted_mean, rtol=1e-5, atol=1e-6)  # the same goods: the same fit, not old_mean
