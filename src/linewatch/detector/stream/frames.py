"""From a Kafka frame message to a model input, or to a dead letter with its reason."""

from __future__ import annotations

import logging
import time
from concurrent.futures import Executor

import cv2
import numpy as np
import torch

from linewatch.contracts.messages import FrameMeta, MessageError

from ..frame_stats import input_statistics
from ..geometry import FrameInput, InputGeometry, model_inputs
from ..imaging import ImageError, check_jpeg, decode_image, exif_orientation, probe_image
from .batches import PREVIEW_SIDE, DeadLetter, PreparedFrame, RawFrame

log = logging.getLogger(__name__)


def prepare_frame(raw: RawFrame, geometry: InputGeometry, max_pixels: int) -> PreparedFrame | DeadLetter:
    """Parse headers, check and decode the image, and make its model inputs under the model's ``geometry``
    (:func:`..geometry.model_inputs`, as in training). Never raises for bad input."""
    started = time.time_ns()
    try:
        meta = FrameMeta.from_headers(raw.headers)
        rgb = decode_image(raw.value or b"", raw.source, max_pixels)
        h, w = rgb.shape[:2]
        preview = preview_image(rgb)
        model_input = model_inputs(rgb, geometry, raw.source)
    except (MessageError, ImageError) as exc:
        return DeadLetter(raw, exc.reason, exc.detail)
    except (cv2.error, ValueError, OSError, MemoryError) as exc:  # a decoder failing in a way not foreseen
        return DeadLetter(raw, "undecodable", f"{raw.source}: {type(exc).__name__}: {exc}")
    # here, in the decode pool's threads, not on the inference thread
    stats = _statistics_or_none(model_input, raw.source)
    return PreparedFrame(raw, meta, model_input, preview, w, h, started, (time.time_ns() - started) / 1e6, stats)


def preview_image(rgb: np.ndarray) -> np.ndarray:
    """The preview of a uint8 (H, W, 3) frame for its heatmap overlay: :data:`.batches.PREVIEW_SIDE` pixels on its
    longer side, the frame itself when that side is no longer. Bilinear down to half size, area below: a display
    image, where area interpolation cost 7.8 ms of a 900x900 frame's decode stage against bilinear's 1.1 ms (OpenCV,
    one thread) for a mean difference under 0.5 grey levels (tests/test_imaging.py); the model input is made from
    the frame, never from this. The GPU decoder's previews (:mod:`.device_decode`) stay area-interpolated."""
    h, w = rgb.shape[:2]
    scale = PREVIEW_SIDE / max(h, w)
    if scale >= 1:
        return rgb
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))),
                      interpolation=cv2.INTER_LINEAR if scale >= 0.5 else cv2.INTER_AREA)


def prepare_batch(raws: list[RawFrame], geometry: InputGeometry, max_pixels: int, device: torch.device,
                  pool: Executor) -> list[PreparedFrame | DeadLetter]:
    """:func:`prepare_frame` for a batch, in ``pool``'s threads; on CUDA, JPEG frames that pass the CPU
    checks are decoded and prepared on the GPU (:mod:`.device_decode`). Order is kept."""
    if device.type != "cuda":
        return list(pool.map(lambda r: prepare_frame(r, geometry, max_pixels), raws))
    from .device_decode import decode_jpegs

    started = time.time_ns()
    out: list[PreparedFrame | DeadLetter | None] = [None] * len(raws)
    on_device: list[tuple[int, FrameMeta]] = []
    for i, raw in enumerate(raws):
        try:
            meta = FrameMeta.from_headers(raw.headers)
            fmt, _, _ = probe_image(raw.value or b"", raw.source, max_pixels)
            if fmt == "JPEG":
                check_jpeg(raw.value or b"", raw.source)  # nvJPEG would decode damaged data without a word
        except (MessageError, ImageError) as exc:
            out[i] = DeadLetter(raw, exc.reason, exc.detail)
            continue
        if fmt == "JPEG" and exif_orientation(raw.value or b"") == 1:  # the device decoder does not turn images
            on_device.append((i, meta))
    decoded = decode_jpegs([raws[i].value or b"" for i, _ in on_device], geometry, device)
    per_frame_ms = (time.time_ns() - started) / 1e6 / max(1, len(on_device))
    for (i, meta), result in zip(on_device, decoded, strict=True):
        if result is not None:
            model_input, preview, w, h = result
            out[i] = PreparedFrame(raws[i], meta, model_input, preview, w, h, started, per_frame_ms,
                                   _statistics_or_none(model_input, raws[i].source))
    rest = [i for i, o in enumerate(out) if o is None]  # PNG and friends, and JPEGs the GPU refused
    for i, prepared in zip(rest, pool.map(lambda j: prepare_frame(raws[j], geometry, max_pixels), rest),
                           strict=True):
        out[i] = prepared
    return out  # type: ignore[return-value]


def _statistics_or_none(model_input: FrameInput, source: str) -> dict[str, float] | None:
    """The drift statistics of a prepared frame, or None (no drift check for it) when they cannot be taken: a frame
    that decoded is scored either way, on the CPU as on the device, and no statistic may stop the worker."""
    try:
        return input_statistics(model_input)
    except (ValueError, RuntimeError, cv2.error) as exc:
        log.warning("%s: no frame statistics (%s: %s); the frame is scored without a drift check",
                    source, type(exc).__name__, exc)
        return None
