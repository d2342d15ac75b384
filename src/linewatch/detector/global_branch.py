"""The global branch: an image-level Gaussian of pooled teacher features beside STPM's local anomaly map.

STPM's image score is the maximum of a local map, so a defect that changes a whole surface a little everywhere
(an uneven tile, a wrong colour) barely moves it. The global branch models the goods' image-level features instead,
as Rippel, Mertens and Merhof do ("Modeling the distribution of normal data in pre-trained deep features for anomaly
detection", ICPR 2020, arXiv 2005.14140):

* **features**: each stage of the frozen teacher pyramid (strides 4, 8, 16; the raw stages, before STPM's channel
  normalisation) is pooled over its positions, per channel, and the stages are concatenated. Two poolings
  (``features.pooling`` in ``model.json``, :data:`POOLINGS`): ``"global average and standard deviation"`` (models
  fitted since 2026-12-02): each channel's mean and its population standard deviation over the positions (the
  channel statistics that Huang and Belongie's adaptive instance normalisation, ICCV 2017, takes as an image's
  style), D = 2 x sum of the stage channels (352 for ``efficientnet_lite0``); ``"global average"`` (the paper's;
  models fitted before, read as they were), the means alone, D = 176. The standard deviations add what an uneven
  surface or a crack changes and a mean over the whole window averages out (``bench/global_only.py``: Magnetic Tile
  0.850 -> 0.888 image AUROC, bottle 0.998 either way). They come from the teacher pass STPM makes anyway.
* **fit**: a multivariate Gaussian on the model-input windows of the *training* goods (never the held-out ones):
  their mean and the Ledoit-Wolf shrinkage covariance (scikit-learn's ``LedoitWolf``, as in the paper, which needs
  no more images than dimensions), stored as the mean and the precision (inverse covariance), float64, in a
  safetensors file whose name (``file``; absent: ``global.safetensors``) and SHA-256 ``model.json`` records under
  ``global``. Training writes ``global.safetensors``; ``linewatch fit-global`` writes ``global-<sha256[:16]>``,
  beside the one in use, so that replacing ``model.json`` is its one commit point (:func:`branch_file_name`).
* **score**: the Mahalanobis distance ``sqrt((f - mean)^T P (f - mean))``, computed as ``||(f - mean) L||`` with
  ``P = L L^T`` (Cholesky factor, in float64 at load, float32 in the scoring graph: a sum of squares, never
  negative). A frame's global score is the largest of its windows' (:func:`.scoring.frame_scores`).
* **threshold**: the image threshold rule (:mod:`.calibration`) on the held-out goods' global scores, set with STPM's
  by :func:`.calibration.calibrate_thresholds` (``thresholds.global`` of ``model.json``; a reduced-precision export's
  own, recalibrated at its precision, under ``exports.<runtime>.thresholds.global``).
* **fusion** (the image score and verdict): each score divided by its own threshold and the larger one taken, the
  max rule of score fusion (Kittler, Hatef, Duin, Matas, "On combining classifiers", IEEE TPAMI 20(3), 1998), on
  scores normalised so that 1 is each one's decision boundary. It is reported in STPM's units, so ``thresholds.image``
  and everything read against it stay as they are::

      image score = max(stpm score, global score * scale),  scale = thresholds.image / thresholds.global

  A frame is a defect when either score is above its own threshold. Each threshold is set for the false-reject
  target r, so the fused false-reject rate is at most 2r (union bound). The anomaly map is STPM's, unchanged.

A model without ``global`` in its ``model.json`` (every model from before this branch), or whose ``global`` is
``{"skipped": why}`` (training found too few goods for a Gaussian), has no branch and scores exactly as before.
This module holds the computation and the file; fitting it: :mod:`.global_fit`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save_file
from torch import nn

from linewatch.contracts.files import sha256_file

GLOBAL_FILE = "global.safetensors"
GLOBAL_FIELD = "global"  # model.json section, see :func:`branch_metadata`
_VERSIONED = re.compile(r"global-[0-9a-f]{16}\.safetensors")


class GlobalBranchError(ValueError):
    """A global branch file that is missing or does not match its record in ``model.json``."""


MEAN = "global average"
MEAN_STD = "global average and standard deviation"
POOLINGS = (MEAN_STD, MEAN)  # the first is what a branch is fitted with now
DEFAULT_POOLING = POOLINGS[0]


def pooled_features(stages: Sequence[torch.Tensor], pooling: str = MEAN) -> torch.Tensor:
    """Raw teacher stages [(B, C_i, h_i, w_i)] -> float32 (B, D): each stage's per-channel mean over its positions
    (global average pooling), in stage order, D = sum C_i; with ``pooling`` :data:`MEAN_STD` followed by each
    stage's per-channel population standard deviation over its positions, in stage order, D = 2 sum C_i.

    Raises:
        GlobalBranchError: an unknown ``pooling``.
    """
    if pooling not in POOLINGS:
        raise GlobalBranchError(f"unknown global branch pooling {pooling!r}; this version knows {list(POOLINGS)}")
    floats = [s.float() for s in stages]
    means = [s.mean(dim=(2, 3)) for s in floats]
    if pooling == MEAN:
        return torch.cat(means, dim=1)
    # centred before squaring: E[x^2] - E[x]^2 would cancel catastrophically in float32 on large activations
    stds = [(s - m[:, :, None, None]).pow(2).mean(dim=(2, 3)).sqrt() for s, m in zip(floats, means, strict=True)]
    return torch.cat(means + stds, dim=1)


def pooled_dim(stage_channels: Sequence[int], pooling: str) -> int:
    """D of :func:`pooled_features` for stages of ``stage_channels`` channels pooled by ``pooling``."""
    return sum(stage_channels) * (2 if pooling == MEAN_STD else 1)


def record_pooling(meta: dict[str, Any]) -> str:
    """The pooling a model's ``global`` record names (``features.pooling``; :data:`MEAN` where it names none).

    Raises:
        GlobalBranchError: a pooling this version does not know (a model from a newer linewatch).
    """
    pooling = str(((meta.get(GLOBAL_FIELD) or {}).get("features") or {}).get("pooling") or MEAN)
    if pooling not in POOLINGS:
        raise GlobalBranchError(f"model.json: global branch pooling {pooling!r} is not one this version knows "
                                f"({list(POOLINGS)}); upgrade linewatch or fit the branch again (linewatch fit-global)")
    return pooling


def fit_gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit the Gaussian of ``features`` float (N, D), N >= 2: (mean float64 (D,), precision float64 (D, D),
    Ledoit-Wolf shrinkage in [0, 1]) by scikit-learn's ``LedoitWolf`` (assume_centered False).

    Raises:
        ValueError: fewer than 2 rows, or non-finite values.
    """
    from sklearn.covariance import LedoitWolf

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"a Gaussian needs at least 2 feature vectors (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features with non-finite values")
    lw = LedoitWolf().fit(x)
    return lw.location_, lw.precision_, float(lw.shrinkage_)


class GlobalGaussian(nn.Module):
    """The branch at scoring time: raw teacher stages -> Mahalanobis distances (module docstring).

    Args:
        mean: float (D,); precision: symmetric positive definite float (D, D).
        scale: STPM's image threshold / the global threshold (the fusion's factor), 1.0 until calibrated.
        pooling: one of :data:`POOLINGS`, the features the Gaussian was fitted on (:func:`pooled_features`).
    Raises (constructor):
        GlobalBranchError: shapes that do not fit, a precision that is not positive definite, an unknown pooling.
    """

    def __init__(self, mean: np.ndarray, precision: np.ndarray, scale: float = 1.0, pooling: str = MEAN):
        super().__init__()
        if pooling not in POOLINGS:
            raise GlobalBranchError(f"unknown global branch pooling {pooling!r}")
        self.pooling = pooling
        mean64, precision64 = np.asarray(mean, dtype=np.float64), np.asarray(precision, dtype=np.float64)
        if mean64.ndim != 1 or precision64.shape != (len(mean64), len(mean64)):
            raise GlobalBranchError(f"mean {mean64.shape} and precision {precision64.shape} do not fit")
        try:
            factor = np.linalg.cholesky((precision64 + precision64.T) / 2)
        except np.linalg.LinAlgError:
            raise GlobalBranchError("the precision matrix is not positive definite") from None
        self.register_buffer("mean", torch.from_numpy(mean64).float(), persistent=False)
        self.register_buffer("factor", torch.from_numpy(factor).float(), persistent=False)
        self.scale = float(scale)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        """Raw teacher stages (any float dtype) -> float32 (B,) Mahalanobis distances, in float32 even under
        autocast (a reduced-precision matrix product would move the distance by far more than the stages do)."""
        with torch.autocast(stages[0].device.type, enabled=False):
            centred = pooled_features(stages, self.pooling) - self.mean
            return (centred @ self.factor).pow(2).sum(dim=1).sqrt()

    def fused(self, local_scores: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
        """The fused image score in STPM's units: ``max(local, distance * scale)``, float (B,)."""
        return torch.maximum(local_scores.float(), distances * self.scale)


def fuse_scores(local_scores: np.ndarray, distances: np.ndarray, scale: float) -> np.ndarray:
    """:meth:`GlobalGaussian.fused` on scores already on the host: ``max(local, distance * scale)``, float32 (N,)
    from STPM's image scores and the Mahalanobis distances, both (N,)."""
    return np.maximum(local_scores, distances * np.float32(scale)).astype(np.float32)


def save_branch(path: Path, mean: np.ndarray, precision: np.ndarray) -> str:
    """Write mean and precision (float64) to the safetensors file ``path``; returns its SHA-256."""
    save_file({"mean": torch.from_numpy(np.ascontiguousarray(mean, dtype=np.float64)),
               "precision": torch.from_numpy(np.ascontiguousarray(precision, dtype=np.float64))}, str(path))
    return sha256_file(path)


def branch_file_name(sha256: str) -> str:
    """The content-addressed name of a branch file with hex ``sha256``: ``global-<first 16 hex>.safetensors``, so a
    new Gaussian never overwrites the file the current ``model.json`` names."""
    return f"global-{sha256[:16]}.safetensors"


def is_branch_file(name: str) -> bool:
    """Whether a file name in a model directory is a global branch file (``global.safetensors`` or a
    :func:`branch_file_name`)."""
    return name == GLOBAL_FILE or _VERSIONED.fullmatch(name) is not None


def recorded_file(meta: dict[str, Any]) -> str | None:
    """The branch file's name ``meta["global"]`` records (``global.safetensors`` where it names none, as models
    trained before the versioned names did); None without a branch (no ``global``, or training's
    ``{"skipped": why}``: too few goods for a Gaussian, :func:`.global_fit.fit_branch_or_skip`)."""
    record = meta.get(GLOBAL_FIELD)
    return str(record.get("file") or GLOBAL_FILE) if record and "skipped" not in record else None


def branch_summary(meta: dict[str, Any]) -> str:
    """One line on a model's global branch for people (``linewatch train``, ``linewatch model show``): fitted on
    what, skipped and why, or none."""
    record = meta.get(GLOBAL_FIELD)
    if not record:
        return "none: the model scores with STPM alone (trained without the global branch)"
    if "skipped" in record:
        return f"skipped at training: {record['skipped']}"
    return f"fitted on {record.get('fitted_on', '?')} ({record.get('file') or GLOBAL_FILE})"


def read_branch(model_dir: Path, meta: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """The mean and precision (float64) recorded in ``meta["global"]``, checked against its SHA-256; None for a
    model without a global branch.

    Raises:
        GlobalBranchError: the file is missing, its content differs from the record, or it lacks a tensor.
    """
    name = recorded_file(meta)
    if name is None:
        return None
    path = Path(model_dir) / name
    try:
        data = path.read_bytes()  # read once: the SHA-256 checked is that of the bytes loaded
    except FileNotFoundError:
        raise GlobalBranchError(f"{model_dir}: {path.name} recorded in model.json is missing") from None
    except OSError as exc:
        raise GlobalBranchError(f"{path}: cannot be read ({exc})") from None
    if hashlib.sha256(data).hexdigest() != meta[GLOBAL_FIELD].get("sha256"):
        raise GlobalBranchError(f"{path}: content does not match the SHA-256 recorded in model.json")
    try:
        tensors = load(data)
        return tensors["mean"].numpy(), tensors["precision"].numpy()
    except (KeyError, OSError, RuntimeError, ValueError, SafetensorError) as exc:
        raise GlobalBranchError(f"{path}: not a global branch file ({exc})") from None


def load_branch(model_dir: Path, meta: dict[str, Any]) -> GlobalGaussian | None:
    """The model's :class:`GlobalGaussian`, calibrated (``scale`` from ``model.json``), or None without one.

    Raises:
        GlobalBranchError: see :func:`read_branch`; a record without thresholds.
    """
    fitted = read_branch(model_dir, meta)
    if fitted is None:
        return None
    return GlobalGaussian(*fitted, scale=fusion_scale(meta["thresholds"], str(model_dir)),
                          pooling=record_pooling(meta))


def fusion_scale(thresholds: dict[str, Any], where: str = "model.json") -> float:
    """The fusion's factor of a ``thresholds`` record (model.json's, or a reduced-precision export's):
    ``image / global`` (module docstring).

    Raises:
        GlobalBranchError: the record has no usable ``global`` threshold (calibrated without the branch).
    """
    try:
        scale = float(thresholds["image"]) / float(thresholds["global"])
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        raise GlobalBranchError(f"{where}: thresholds without a usable global threshold, calibrated without the "
                                "global branch; calibrate again (linewatch fit-global, or export again)") from None
    if not np.isfinite(scale) or scale <= 0:
        raise GlobalBranchError(f"{where}: thresholds give the fusion a scale of {scale}")
    return scale


def branch_metadata(*, sha256: str, dim: int, stages: Sequence[int], shrinkage: float, fitted_on: int,
                    score_statistics: dict[str, Any], pooling: str) -> dict[str, Any]:
    """The ``model.json`` ``global`` section: the file and its SHA-256, what was fit on what, the held-out goods'
    distances and the fusion rule (its threshold lives with the others, ``thresholds.global``)."""
    return {
        "file": GLOBAL_FILE, "sha256": sha256, "method": "Gaussian of pooled teacher features, Mahalanobis "
        "distance (Rippel, Mertens, Merhof 2020)", "features": {"pooling": pooling, "stage_channels":
        list(stages), "dim": dim}, "estimator": "sklearn.covariance.LedoitWolf", "shrinkage": shrinkage,
        "fitted_on": f"{fitted_on} model-input windows of the training goods", "held_out_score": score_statistics,
        "fusion": {"rule": "image score = max(stpm score, global score * thresholds.image / thresholds.global); "
                   "defect when either is above its threshold (max rule, Kittler et al. 1998)",
                   "false_reject_rate_bound": "2 x target (union bound)"},
    }
