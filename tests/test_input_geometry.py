"""Field case c11 (a line-scan strip) and frames of any shape, scored under the model's input geometry by
``linewatch score``, the Scorer and a worker's scoring step alike, with maps and regions at the frame's own size;
a model.json without the geometry field scores exactly as before (plain resize)."""

import json
import shutil
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from linewatch.contracts.heatmap import render_overlay
from linewatch.contracts.messages import FrameMeta
from linewatch.detector.geometry import InputGeometry
from linewatch.detector.imaging import read_image, to_model_input
from linewatch.detector.model_files import METADATA_FILE
from linewatch.detector.scoring import Scorer
from linewatch.detector.stream.batches import PreparedFrame, RawFrame
from linewatch.detector.stream.frames import prepare_frame
from linewatch.detector.stream.inspection import score_batch

from datasets import field_case

C11 = field_case("c11_linescan_strip") / "jpeg_linescan_strip_4096x256.jpg"
GOOD = field_case("c09_threshold_few_goods") / "heldout20" / "good_140.jpg"  # 320x240, not trained on


def _worker(scorer: Scorer, rgb: np.ndarray, frame_id: int = 1):
    """A frame through a worker's steps (decode, prepare, score_batch), sent as a lossless PNG."""
    data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()
    meta = FrameMeta("cam-1", "line-1", frame_id, time.time_ns(), "image/png")
    frame = prepare_frame(RawFrame("t.frames", 0, frame_id, b"cam-1", data, meta.headers()), scorer.geometry,
                          40_000_000)
    assert isinstance(frame, PreparedFrame), frame
    return frame, score_batch(scorer, [frame], "w-test", keep_good=lambda _m: True)


def _scratch(rgb: np.ndarray, y: int, x: int, h: int = 8, w: int = 40) -> np.ndarray:
    """The c09 scratch5 defect (a dark 8x40 px bar, RGB about 19/20/21) drawn at (y, x)."""
    out = rgb.copy()
    out[y : y + h, x : x + w] = (19, 20, 21)
    return out


def test_c11_a_linescan_strip_is_tiled_and_its_normal_content_stays_below_threshold(c09_default_model):
    scorer = Scorer(c09_default_model.model_dir, "cpu")
    assert scorer.geometry.mode == "auto" and scorer.geometry.tile_scale == pytest.approx(256 / 320)  # measured
    assert c09_default_model.metadata["input"]["stitch"] == "max"
    rgb = read_image(C11)
    framed = scorer.prepare(rgb)
    assert framed.plan.mode == "tile" and framed.plan.scaled == (205, 3277) and len(framed.plan.windows) == 17
    scored = scorer.score_frames([framed])
    ratio = float(scored.normalized[0])
    assert not scored.is_defect[0] and ratio < 1.0
    assert scored.maps[0].shape == (205, 3277)
    assert scorer.full_resolution_map(scored.maps[0], rgb.shape[:2]).shape == (256, 4096)
    # `linewatch score` and a worker score the same strip the same way
    out = subprocess.run([sys.executable, "-m", "linewatch", "score", "--model", str(c09_default_model.model_dir),
                          "--device", "cpu", str(C11)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    command = json.loads(out.stdout.strip().splitlines()[-1])
    frame, batch = _worker(scorer, rgb)
    result = batch.results[0]
    print(f"c11: {ratio:.3f}x threshold (score {scored.image_scores[0]:.5f}, threshold {scorer.image_threshold:.5f}); "
          f"score {command['normalized_score']:.3f}x, worker {result.normalized_score:.3f}x")
    assert command["verdict"] == result.verdict == "good" and command["regions"] == []
    assert command["image_score"] == pytest.approx(float(scored.image_scores[0]), rel=1e-5)
    assert result.image_score == pytest.approx(float(scored.image_scores[0]), rel=1e-5)
    assert (result.width, result.height) == (4096, 256) and batch.maps[0].shape == (205, 3277)
    assert frame.preview.shape == (40, 640, 3)
    assert render_overlay(frame.preview, batch.maps[0], scorer.pixel_threshold).shape == (40, 640, 3)


def test_a_scratch_on_the_strip_is_found_where_it_is(c09_default_model):
    scorer = Scorer(c09_default_model.model_dir, "cpu")
    rgb = _scratch(read_image(C11), 150, 3000)  # in the overlap of two windows
    scored = scorer.score_images([rgb])
    assert scored.is_defect[0]
    full = scorer.full_resolution_map(scored.maps[0], rgb.shape[:2])
    peak_y, peak_x = np.unravel_index(np.argmax(full), full.shape)
    assert abs(peak_y - 154) <= 12 and abs(peak_x - 3020) <= 30
    r = scorer.regions(scored.maps[0], rgb.shape[:2])[0]
    assert r.x <= 3000 and r.x + r.width >= 3040 and r.y <= 150 and r.y + r.height >= 158


@pytest.mark.parametrize("shape", ["landscape", "portrait", "wide"])
def test_non_square_frames_come_back_at_their_own_size_never_transposed(c09_default_model, shape):
    scorer = Scorer(c09_default_model.model_dir, "cpu")
    good = read_image(GOOD)
    # 320x240; 180x240 (a crop, taller than wide); 960x240 (4:1, tiled: the good part, mirrored, and again)
    rgb = {"landscape": good, "portrait": np.ascontiguousarray(good[:, 60:240]),
           "wide": np.concatenate([good, good[:, ::-1], good], axis=1)}[shape]
    h, w = rgb.shape[:2]
    y, x = (h * 3) // 4 - 4, w // 5  # lower left: its place differs in every orientation
    rgb = _scratch(rgb, y, x)
    framed = scorer.prepare(rgb)
    assert framed.plan.mode == ("tile" if shape == "wide" else "letterbox")
    scored = scorer.score_frames([framed])
    assert scored.maps[0].shape == framed.plan.scaled
    assert abs(framed.plan.scaled[0] / framed.plan.scaled[1] - h / w) < 0.02  # the frame's aspect ratio
    assert scorer.full_resolution_map(scored.maps[0], (h, w)).shape == (h, w)
    frame, batch = _worker(scorer, rgb)
    result = batch.results[0]
    assert result.image_score == pytest.approx(float(scored.image_scores[0]), rel=1e-5)
    assert result.verdict == "defect" and (result.width, result.height) == (w, h)
    r = result.regions[0]
    assert r.x <= x + 5 and r.x + r.width >= x + 35 and r.y <= y + 2 and r.y + r.height >= y + 6, r
    assert render_overlay(frame.preview, batch.maps[0], scorer.pixel_threshold).shape == frame.preview.shape


def test_a_model_json_without_input_scores_as_before_plain_resize(c09_default_model, tmp_path):
    old = tmp_path / "old-model"
    shutil.copytree(c09_default_model.model_dir, old)
    meta = json.loads((old / METADATA_FILE).read_text())
    del meta["input"]
    (old / METADATA_FILE).write_text(json.dumps(meta))
    scorer = Scorer(old, "cpu")
    assert scorer.geometry == InputGeometry("resize", 256)
    rgb = read_image(C11)
    before = scorer.score(to_model_input(rgb, 256)[None])  # what every path computed before the field existed
    scored = scorer.score_images([rgb])
    assert scored.image_scores[0] == before.image_scores[0]
    assert np.array_equal(scored.maps[0], before.anomaly_maps[0, 0]) and scored.maps[0].shape == (256, 256)
    assert scorer.full_resolution_map(scored.maps[0], rgb.shape[:2]).shape == (256, 4096)
    _, batch = _worker(scorer, rgb)
    assert batch.results[0].image_score == pytest.approx(float(before.image_scores[0]), rel=1e-5)
    print(f"c11 squeezed into 256x256 by the same student: {float(scored.normalized[0]):.3f}x threshold")
    assert scored.is_defect[0]  # the field case's fault: squeezed 16:1, normal content is a "defect" (1.25x)
