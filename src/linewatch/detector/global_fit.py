"""Fitting the global branch (:mod:`.global_branch`): at training time, and on a model trained without one.

:func:`fit_branch` is what :func:`.training.train` calls once the student is trained and STPM's image threshold is
set: the teacher's pooled features of the *training* goods' windows are fit (Ledoit-Wolf), the held-out goods are
scored whole by :func:`.scoring.frame_scores` (the computation the workers and ``linewatch score`` run) and the
global threshold is set on their global scores by the image threshold rule (:mod:`.calibration`), at the same
false-reject target; the branch is then attached to the model, calibrated.

:func:`add_global_branch` gives an existing model directory the branch (``linewatch fit-global``): it re-reads the
model's own training and held-out goods from its manifest (every file must be there with the SHA-256 recorded,
so the branch is fit on exactly the images the student was), fits as above, writes ``global.safetensors`` and the
``global`` section of ``model.json``; the model's ONNX export, which lacks the branch, is removed from
``model.json`` (the caller exports again). Its student, thresholds and anomaly maps are not touched.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibration import calibrate_image_threshold, score_statistics
from .devices import resolve_device, to_model_layout
from .geometry import FrameInput, InputGeometry
from .global_branch import (
    GLOBAL_FIELD,
    GLOBAL_FILE,
    GlobalGaussian,
    branch_metadata,
    fit_gaussian,
    pooled_features,
    save_branch,
)
from .model_files import EXPORTS_FIELD, ModelFileError, load_model, read_metadata, write_metadata
from .scoring import frame_scores
from .stpm import STPM
from .training_set import load_images


@dataclass
class FittedBranch:
    """A fitted, calibrated branch: ``mean`` float64 (D,), ``precision`` float64 (D, D) and the ``model.json``
    ``global`` section (``metadata``, its ``sha256`` filled in when the file is written)."""

    mean: np.ndarray
    precision: np.ndarray
    metadata: dict[str, Any]


@torch.no_grad()
def teacher_pooled(model: STPM, windows: torch.Tensor, device: torch.device, batch: int = 32) -> np.ndarray:
    """uint8 (N, 3, S, S) windows -> their pooled raw teacher features float64 (N, D), in float32 on ``device``."""
    out = []
    for start in range(0, len(windows), batch):
        x = to_model_layout(windows[start : start + batch], device)
        out.append(pooled_features(model.teacher(model.normalize_input(x))).double().cpu().numpy())
    return np.concatenate(out)


def fit_branch(model: STPM, train_windows: torch.Tensor, val_frames: Sequence[FrameInput], device: torch.device,
               image_threshold: float, target_rate: float, min_goods: int, batch: int = 32) -> FittedBranch:
    """Fit the branch on the training goods' windows uint8 (N, 3, S, S), calibrate it on the held-out goods'
    frames (whole, under the model's geometry) at ``target_rate``, and attach it to ``model``
    (``model.global_branch``), its fusion scale = ``image_threshold`` (STPM's) / the global threshold.

    Raises:
        ValueError: fewer than 2 training windows, no held-out frame, or non-finite features.
    """
    if not val_frames:
        raise ValueError("the global branch is calibrated on held-out goods; there are none")
    model.global_branch = None
    mean, precision, shrinkage = fit_gaussian(teacher_pooled(model, train_windows, device, batch))
    model.global_branch = GlobalGaussian(mean, precision).to(device)
    distances = frame_scores(model, val_frames, device, "float32", batch).global_scores
    calibration = calibrate_image_threshold(distances, target_rate, min_goods)
    model.global_branch.scale = image_threshold / calibration.threshold
    meta = branch_metadata(sha256="", dim=len(mean), stages=list(model.teacher.channels), shrinkage=shrinkage,
                           fitted_on=len(train_windows), threshold=calibration.threshold,
                           calibration=calibration.as_dict(), image_threshold=image_threshold,
                           score_statistics=score_statistics(distances))
    return FittedBranch(mean, precision, meta)


def add_global_branch(model_dir: Path, device: str = "auto", teacher_weights: Path | None = None,
                      batch: int = 32) -> dict[str, Any]:
    """Fit and calibrate the global branch of the trained model at ``model_dir`` on its own training and held-out
    goods (module docstring); returns the ``global`` section written to ``model.json``. A branch it had is replaced.

    Raises:
        ModelFileError: the model does not load; a manifest image is missing or no longer has its SHA-256; the
            manifest has no training or no held-out image.
        TrainingError: an image cannot be used. OSError: the directory cannot be written.
    """
    model_dir = Path(model_dir)
    meta = read_metadata(model_dir)
    entries = meta.get("manifest", [])
    train = [e for e in entries if e.get("role") == "train"]
    val = [e for e in entries if e.get("role") == "val"]
    if not train or not val:
        raise ModelFileError(f"{model_dir}: the manifest lists no training or no held-out images to fit on")
    for e in train + val:
        try:
            digest = hashlib.sha256(Path(e["path"]).read_bytes()).hexdigest()
        except OSError as exc:
            raise ModelFileError(f"{model_dir}: training image {e['path']} cannot be read ({exc})") from None
        if digest != e["sha256"]:
            raise ModelFileError(f"{model_dir}: training image {e['path']} changed since training")
    dev = resolve_device(device)
    loaded = load_model(model_dir, dev, teacher_weights)
    geometry = InputGeometry.from_metadata(meta)
    max_pixels = int(meta.get("training", {}).get("max_pixels") or 0) or None
    kwargs = {"max_pixels": max_pixels} if max_pixels else {}
    train_images = load_images([Path(e["path"]) for e in train], geometry, **kwargs)
    val_images = load_images([Path(e["path"]) for e in val], geometry, **kwargs)
    fitted = fit_branch(loaded.stpm, train_images.windows(range(len(train))), val_images.frames, dev,
                        float(meta["thresholds"]["image"]), float(meta["thresholds"]["target_false_reject_rate"]),
                        int(meta.get("training", {}).get("min_held_out_goods", 20)), batch)
    tmp = model_dir / f".{GLOBAL_FILE}.tmp"
    try:
        sha = save_branch(tmp, fitted.mean, fitted.precision)
        os.replace(tmp, model_dir / GLOBAL_FILE)
    finally:
        tmp.unlink(missing_ok=True)
    meta[GLOBAL_FIELD] = {**fitted.metadata, "sha256": sha}
    meta.get(EXPORTS_FIELD, {}).pop("onnx", None)  # the export lacks the branch: export again
    write_metadata(model_dir, meta)
    return meta[GLOBAL_FIELD]
