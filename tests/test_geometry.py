"""The input geometry (detector/geometry.py): plans, padding, windows and stitching, without a model."""

import json

import numpy as np
import pytest

from linewatch.detector.geometry import MAX_TILES, InputGeometry, model_inputs, stitch, stitch_batch
from linewatch.detector.imaging import ImageError, resize_image, to_model_input
from linewatch.detector.model_files import ModelFileError, read_metadata


def _frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize("side", [128, 900, 57])
def test_a_square_frame_gets_the_pixels_resize_gives_it_in_every_mode(side):
    rgb = _frame(side, side)
    expected = to_model_input(rgb, 128)
    for mode in ("resize", "letterbox", "auto", "tile"):
        g = InputGeometry(mode, 128, tile_scale=128 / side)
        framed = model_inputs(rgb, g)
        assert framed.tiles.shape == (1, 3, 128, 128) and framed.tiles.dtype == np.uint8
        assert np.array_equal(framed.tiles[0], expected), mode


def test_letterbox_keeps_the_aspect_ratio_and_pads_by_reflection():
    rgb = _frame(240, 320)
    framed = model_inputs(rgb, InputGeometry("letterbox", 128))
    plan = framed.plan
    assert (plan.mode, plan.scaled, plan.padded, plan.offset, plan.windows) == (
        "letterbox", (96, 128), (128, 128), (16, 0), ((0, 0),))
    image = framed.tiles[0].transpose(1, 2, 0)
    assert np.array_equal(image[16:112], resize_image(rgb, 96, 128))  # the frame, centred, unsqueezed
    assert np.array_equal(image[15], image[17]) and np.array_equal(image[112], image[110])  # reflected about the edge
    # auto letterboxes up to max_aspect (2.0), portrait frames too, and tiles beyond
    auto = InputGeometry("auto", 128, tile_scale=0.4)
    assert auto.plan(320, 240).scaled == (128, 96) and auto.plan(320, 240).mode == "letterbox"
    assert auto.plan(100, 200).mode == "letterbox" and auto.plan(100, 201).mode == "tile"


def test_a_strip_is_tiled_at_the_model_pixel_scale_with_overlapping_windows():
    g = InputGeometry("auto", 128, tile_scale=0.4, tile_overlap=0.25)
    plan = g.plan(256, 4096)
    assert (plan.mode, plan.scaled, plan.padded, plan.offset) == ("tile", (102, 1638), (128, 1638), (13, 0))
    starts = [x for _, x in plan.windows]
    assert starts[0] == 0 and starts[-1] == 1638 - 128 and {y for y, _ in plan.windows} == {0}
    assert np.diff(starts).max() <= 128 * 0.75  # neighbours overlap by >= 25%
    framed = model_inputs(_frame(256, 4096), g)
    assert framed.tiles.shape == (len(plan.windows), 3, 128, 128)
    # A portrait strip is tiled down its height: rows, not columns (never transposed).
    tall = g.plan(4096, 256)
    assert tall.scaled == (1638, 102) and {x for _, x in tall.windows} == {0} and len(tall.windows) > 1


def test_stitching_takes_the_maximum_in_overlaps_and_cuts_the_padding():
    g = InputGeometry("tile", 64, tile_scale=1.0, tile_overlap=0.5)
    plan = g.plan(40, 160)  # 40 rows padded to 64; 160 columns: windows at 0, 32, 64, 96
    assert plan.windows == ((0, 0), (0, 32), (0, 64), (0, 96)) and plan.offset == (12, 0)
    maps = np.stack([np.full((64, 64), float(i), np.float32) for i in range(4)])
    maps[0, 30, 10] = 9.0  # a peak in padding? row 30 is inside the frame (rows 12..51): it stays
    maps[1, 5, 40] = 99.0  # row 5 is padding: cut off, never the score
    stitched = stitch(maps, plan)
    assert stitched.shape == (40, 160) and stitched.dtype == np.float32
    assert stitched.max() == 9.0 and stitched[30 - 12, 10] == 9.0
    assert stitched[0, 40] == 1.0 and stitched[0, 70] == 2.0 and stitched[0, 159] == 3.0  # the larger neighbour
    two = stitch_batch(np.concatenate([maps, maps[:1]]), [plan, g.plan(64, 64)])
    assert [m.shape for m in two] == [(40, 160), (64, 64)]
    with pytest.raises(ValueError, match="window maps"):
        stitch_batch(maps, [plan, plan])


def test_a_frame_needing_too_many_windows_is_refused_with_its_reason():
    g = InputGeometry("tile", 64, tile_scale=1.0)
    with pytest.raises(ImageError) as refused:
        g.plan(64 * 20, 64 * 20, "cam/0@5")
    assert refused.value.reason == "too_many_tiles" and str(MAX_TILES) in refused.value.detail
    assert "cam/0@5" in str(refused.value)


def test_model_json_without_input_reads_as_resize_and_a_bad_one_is_refused(tmp_path):
    old = {"image_size": 256}
    assert InputGeometry.from_metadata(old) == InputGeometry("resize", 256)
    recorded = InputGeometry("auto", 256, tile_scale=0.8).as_dict()
    assert recorded["stitch"] == "max" and InputGeometry.from_metadata({"image_size": 256, "input": recorded}) == (
        InputGeometry("auto", 256, tile_scale=0.8))
    for bad, message in (({"mode": "squash"}, "not one of"), ({"mode": "auto"}, "without its tile_scale"),
                         ({"mode": "letterbox", "size": 128}, "differs from image_size"),
                         ({"mode": "tile", "tile_scale": 1, "tile_overlap": 0.95}, "tile_overlap")):
        with pytest.raises(ValueError, match=message):
            InputGeometry.from_metadata({"image_size": 256, "input": bad})
    meta = {"format": "linewatch-stpm/1", "backbone": "b", "teacher_weights": {}, "image_size": 256,
            "thresholds": {}, "weights_sha256": "0", "map_smoothing_sigma": 4.0, "input": {"mode": "squash"}}
    (tmp_path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ModelFileError, match="squash"):
        read_metadata(tmp_path)


def test_the_tile_scale_is_measured_on_the_training_images():
    g = InputGeometry("auto", 128)
    assert g.resolved([(240, 320)] * 3 + [(480, 640)]).tile_scale == pytest.approx(0.4)
    assert g.resolved([(256, 4096)]).tile_scale == pytest.approx(0.5)  # strips: the short side fills a window
    assert InputGeometry("letterbox", 128).resolved([(240, 320)]).tile_scale is None
    assert InputGeometry("tile", 128, tile_scale=1.0).resolved([(240, 320)]).tile_scale == 1.0
