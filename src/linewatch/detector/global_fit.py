"""Fitting the global branch (:mod:`.global_branch`): at training time, and on a model trained without one.

:func:`fit_branch` is what :func:`.training.train` calls once the student is trained: the teacher's pooled features of
the *training* goods' windows are fit (Ledoit-Wolf) and the branch attached to the model. :func:`calibrate_model`
then scores the held-out goods whole by :func:`.scoring.frame_scores` (the computation the workers and ``linewatch
score`` run; or an export runtime's forward, :mod:`.runtimes.reduced_precision`) and sets every threshold on them by
:func:`.calibration.calibrate_thresholds`: STPM's image and pixel thresholds and, with a branch, the global one, at
the same false-reject target, which fixes the fusion's scale (:func:`.global_branch.fusion_scale`).

:func:`add_global_branch` gives an existing model directory the branch (``linewatch fit-global``): it re-reads the
model's own training and held-out goods from its manifest (every file must be there with the SHA-256 recorded,
so the branch is fit on exactly the images the student was), fits and calibrates as above, writes the Gaussian to a
new ``global-<sha256[:16]>.safetensors``, then the ``global`` section of ``model.json`` (naming that file) and
``thresholds.global`` in one replacement of ``model.json``, then removes the branch file it replaced; the image
score is now the fused one, so ``validation.image_score`` (the score-drift reference, :mod:`.drift`) is the held-out
goods' fused scores. Its exports, which lack the branch, are removed from ``model.json`` (the caller exports again).
Its student, STPM thresholds and anomaly maps are not touched.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .calibration import calibrate_thresholds, score_statistics
from .devices import resolve_device, to_model_layout
from .geometry import FrameInput, InputGeometry
from .global_branch import (
    DEFAULT_POOLING,
    GLOBAL_FIELD,
    GLOBAL_FILE,
    GlobalGaussian,
    branch_file_name,
    branch_metadata,
    fit_gaussian,
    fuse_scores,
    fusion_scale,
    is_branch_file,
    pooled_features,
    recorded_file,
    save_branch,
)
from .model_files import EXPORTS_FIELD, ModelFileError, load_model, read_metadata, write_metadata
from .scoring import FrameOutputs, frame_scores
from .stpm import STPM
from .training_set import load_images

log = logging.getLogger(__name__)

@dataclass
class FittedBranch:
    """A fitted branch: ``mean`` float64 (D,), ``precision`` float64 (D, D), the Ledoit-Wolf ``shrinkage`` and the
    number of training windows it was ``fitted_on``, on features pooled by ``pooling``
    (:func:`.global_branch.pooled_features`)."""

    mean: np.ndarray
    precision: np.ndarray
    shrinkage: float
    fitted_on: int
    pooling: str = DEFAULT_POOLING

    def metadata(self, model: STPM, held_out: FrameOutputs) -> dict[str, Any]:
        """The ``model.json`` ``global`` section (its ``sha256`` empty until the file is written)."""
        return branch_metadata(sha256="", dim=len(self.mean), stages=list(model.teacher.channels),
                               shrinkage=self.shrinkage, fitted_on=self.fitted_on,
                               score_statistics=score_statistics(held_out.global_scores), pooling=self.pooling)


@torch.no_grad()
def teacher_pooled(model: STPM, windows: torch.Tensor, device: torch.device, batch: int = 32,
                   pooling: str = DEFAULT_POOLING) -> np.ndarray:
    """uint8 (N, 3, S, S) windows -> their pooled raw teacher features float64 (N, D), in float32 on ``device``
    (:func:`.global_branch.pooled_features` with ``pooling``)."""
    out = []
    for start in range(0, len(windows), batch):
        x = to_model_layout(windows[start : start + batch], device)
        out.append(pooled_features(model.teacher(model.normalize_input(x)), pooling).double().cpu().numpy())
    return np.concatenate(out)


def fit_branch(model: STPM, train_windows: torch.Tensor, device: torch.device, batch: int = 32,
               pooling: str = DEFAULT_POOLING) -> FittedBranch:
    """Fit the branch on the training goods' windows uint8 (N, 3, S, S), their features pooled by ``pooling``, and
    attach it to ``model`` (``model.global_branch``, fusion scale 1 until :func:`calibrate_model`).

    Raises:
        ValueError: fewer than 2 training windows, or non-finite features.
    """
    model.global_branch = None
    mean, precision, shrinkage = fit_gaussian(teacher_pooled(model, train_windows, device, batch, pooling))
    model.global_branch = GlobalGaussian(mean, precision, pooling=pooling).to(device)
    return FittedBranch(mean, precision, shrinkage, len(train_windows), pooling)


def fit_branch_or_skip(model: STPM, train_windows: torch.Tensor, device: torch.device,
                       batch: int = 32) -> tuple[FittedBranch | None, str | None]:
    """(:func:`fit_branch`, None), or (None, why) with a warning where no usable Gaussian can be fit (too few
    training windows for a positive definite precision, as with 2 goods): the model is then STPM alone, as if
    trained without the branch, rather than no model at all; :func:`branch_record` puts why in ``model.json``."""
    try:
        return fit_branch(model, train_windows, device, batch), None
    except ValueError as exc:  # GlobalBranchError is one
        model.global_branch = None
        why = (f"no usable Gaussian from {len(train_windows)} training windows ({exc}); the model scores with STPM "
               "alone")
        log.warning("no global branch: %s", why)
        return None, why


def branch_record(model: STPM, held_out: FrameOutputs, branch: FittedBranch | None, skipped: str | None
                  ) -> dict[str, Any]:
    """The ``global`` entry of a trained model's ``model.json``: the branch's section, ``{"skipped": why}`` where
    training meant to fit one and could not (:func:`fit_branch_or_skip`), nothing where it was not asked for."""
    if branch is not None:
        return {GLOBAL_FIELD: branch.metadata(model, held_out)}
    return {GLOBAL_FIELD: {"skipped": skipped}} if skipped else {}


def calibrate_model(model: STPM, val_frames: Sequence[FrameInput], device: torch.device, target_rate: float,
                    pixel_rate: float, min_goods: int, batch: int = 32,
                    forward: Callable[[torch.Tensor], tuple[np.ndarray, ...]] | None = None,
                    ) -> tuple[dict[str, Any], FrameOutputs]:
    """Score the held-out goods' frames whole (``forward``, else eager PyTorch at float32) and calibrate on them:
    the ``thresholds`` record (:func:`.calibration.calibrate_thresholds`, ``global`` included where ``model`` has a
    branch) and the goods' outputs, whose ``scores`` are the image scores under those thresholds (fused with
    :func:`.global_branch.fusion_scale` of them where there is a branch). ``model``'s own scale is not changed.

    Raises:
        ValueError: no held-out frame, or a rate outside (0, 1).
    """
    if not val_frames:
        raise ValueError("thresholds are calibrated on held-out goods; there are none")
    out = frame_scores(model, val_frames, device, "float32", batch, forward=forward)
    thresholds = calibrate_thresholds(out.local_scores, out.maps, target_rate, pixel_rate, min_goods,
                                      out.global_scores)
    if out.global_scores is None:
        return thresholds, out
    return thresholds, out._replace(scores=fuse_scores(out.local_scores, out.global_scores, fusion_scale(thresholds)))


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
    fitted = fit_branch(loaded.stpm, train_images.windows(range(len(train))), dev, batch)
    old = meta["thresholds"]
    thresholds, held_out = calibrate_model(
        loaded.stpm, val_images.frames, dev, float(old["target_false_reject_rate"]),
        float(old["pixel_false_positive_rate"]), int(meta.get("training", {}).get("min_held_out_goods", 20)), batch)
    # The new Gaussian goes beside the one in use under its own name; replacing model.json (write_metadata) is the
    # one commit point, so a worker loading the model meanwhile gets the old file and record or the new ones.
    tmp = model_dir / f".{GLOBAL_FILE}.tmp"
    try:
        sha = save_branch(tmp, fitted.mean, fitted.precision)
        name = branch_file_name(sha)
        os.replace(tmp, model_dir / name)
    finally:
        tmp.unlink(missing_ok=True)
    in_use = recorded_file(meta)
    # STPM's thresholds stay as trained (maybe on another device); the global one joins them, and the image score
    # (the fused one) of the held-out goods becomes the drift reference
    held_out = held_out._replace(scores=fuse_scores(held_out.local_scores, held_out.global_scores,
                                                    fusion_scale({**thresholds, "image": old["image"]})))
    worse = old.get("status", "calibrated") if thresholds["status"] == "calibrated" else thresholds["status"]
    meta["thresholds"] = {**old, "global": thresholds["global"], "global_calibration": thresholds["global_calibration"],
                          "status": worse}
    meta.setdefault("validation", {})["image_score"] = score_statistics(held_out.scores)
    meta[GLOBAL_FIELD] = {**fitted.metadata(loaded.stpm, held_out), "file": name, "sha256": sha}
    meta.pop(EXPORTS_FIELD, None)  # every export lacks the branch: export again
    try:
        write_metadata(model_dir, meta)
    except BaseException:
        if name != in_use:  # model.json still names the old file (or none): the new one is nobody's
            (model_dir / name).unlink(missing_ok=True)
        raise
    for stale in model_dir.iterdir():  # the replaced branch file, and any a fit-global that died left behind
        if is_branch_file(stale.name) and stale.name != name:
            stale.unlink(missing_ok=True)
    return meta[GLOBAL_FIELD]
