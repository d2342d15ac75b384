"""c08 one image truth: the kept image of a frame holds exactly the pixels the model scored."""

import time

import cv2
import numpy as np

from linewatch.contracts.files import path_of
from linewatch.contracts.messages import FrameMeta
from linewatch.detector.geometry import InputGeometry, model_inputs
from linewatch.detector.imaging import decode_image
from linewatch.detector.stream.batches import PreparedFrame, RawFrame
from linewatch.detector.stream.frames import prepare_frame
from linewatch.detector.stream.image_store import ImageStore

from datasets import field_case

GEOMETRY = InputGeometry("letterbox", 64)  # 64x48 frames: padded to 64x64


def _keep(tmp_path, data: bytes, content_type: str, frame_id: int):
    meta = FrameMeta("cam-1", "line-1", frame_id, time.time_ns(), content_type)
    frame = prepare_frame(RawFrame("t.frames", 0, frame_id, b"cam-1", data, meta.headers()), GEOMETRY, 40_000_000)
    assert isinstance(frame, PreparedFrame)
    image_uri, _ = ImageStore(tmp_path).keep(meta, data, b"overlay")
    return frame, path_of(image_uri)


def test_c08_rgba_frame_is_kept_as_the_rgb_the_model_scored(tmp_path):
    data = (field_case("c08_rgba_alpha") / "rgba_scratch_under_alpha0_64x48.png").read_bytes()
    source = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert source.shape == (48, 64, 4) and (source[..., 3] == 0).any()
    frame, stored = _keep(tmp_path, data, "image/png", 1)
    kept = cv2.imdecode(np.frombuffer(stored.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
    assert stored.suffix == ".png" and kept.shape == (48, 64, 3)  # no alpha left to hide the scratch
    kept_rgb = cv2.cvtColor(kept, cv2.COLOR_BGR2RGB)
    assert np.array_equal(kept_rgb, decode_image(data))
    assert np.array_equal(model_inputs(kept_rgb, GEOMETRY).tiles, frame.model_input.tiles)
    # the scratch (48 dark pixels, all where alpha is 0) is in the kept pixels, where a viewer shows it
    scratch = source[..., :3].astype(int).sum(axis=2) < 200
    assert scratch.sum() == 48 and (source[..., 3][scratch] == 0).all()
    assert np.array_equal(kept_rgb.astype(int).sum(axis=2) < 200, scratch)


def test_a_plain_jpeg_is_kept_byte_for_byte_and_a_gray_png_expanded(tmp_path):
    jpeg = (field_case("c10_train_serve_parity") / "redblue_asym_seed200.jpg").read_bytes()
    _, stored = _keep(tmp_path, jpeg, "image/jpeg", 2)
    assert stored.suffix == ".jpg" and stored.read_bytes() == jpeg
    ok, gray = cv2.imencode(".png", np.tile(np.arange(64, dtype=np.uint8), (48, 1)))
    frame, stored = _keep(tmp_path, gray.tobytes(), "image/png", 3)
    kept = cv2.cvtColor(cv2.imread(str(stored), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    assert kept.shape == (48, 64, 3) and np.array_equal(model_inputs(kept, GEOMETRY).tiles, frame.model_input.tiles)
