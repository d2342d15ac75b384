"""STPM student training on defect-free images (Wang et al. 2021, Sec. 4.1; see :mod:`.stpm` for the method).

As in the paper and the authors' code (github.com/gdwang08/STFPM, ``main.py``): SGD with learning rate
0.4, momentum 0.9 and weight decay 1e-4, batches of 32, 256x256 inputs. As in the authors' code: no augmentation
(the few-shot recipe, off by default, adds some: :mod:`.recipe`), a randomly initialised student, 20% of the good
images held out and the student of the best validation epoch kept (theirs has the lowest mean validation anomaly
map, ours the lowest mean validation loss). Where the defaults differ:

* 20 epochs, not the paper's 100 (raised to 360 SGD steps by the settings' ``min_steps``: :mod:`.recipe`);
* an EfficientNet-Lite0 teacher, not the paper's ResNet-18 (``resnet18`` is available as ``backbone``);
* a batch's loss is the sum over its images, as in anomalib, not the authors' mean (:mod:`.stpm`);
* anomaly maps are smoothed with a Gaussian of sigma 4 model pixels (:mod:`.stpm`);
* the teacher's features are cached in float16 (:func:`.recipe.teacher_cache`; for the losses only);
  on CUDA, mixed precision (bfloat16 where supported, else float16 with a gradient scaler).

Images become model inputs under the input geometry (:mod:`.geometry`; ``input_mode``, by default ``auto``:
letterboxed, or tiled beyond ``max_aspect``); a tiled image trains on each of its windows. Thresholds are then
set on the held-out good images (:mod:`.calibration`), each scored whole by :func:`.scoring.frame_scores`, the
computation the workers and ``linewatch score`` run: the float16 cache shifted scores by up to 1.7e-4 relative,
and a threshold set on shifted scores is not the one served. Then the global branch (``global_branch``, on by
default) is fit on the training goods and calibrated on the held-out ones (:mod:`.global_fit`).
On the CPU the same seed gives the same weights (a test checks it); on CUDA nothing forces deterministic kernels.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import threading
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

import linewatch
from linewatch.contracts.files import sha256_file
from linewatch.contracts.settings import Settings

from .backbones import backbone_spec, build_student, build_teacher
from .calibration import score_statistics
from .devices import autocast, precision_of, resolve_device, to_model_layout
from .frame_stats import reference_statistics
from .geometry import DEFAULT_MAX_ASPECT, DEFAULT_MODE, DEFAULT_TILE_OVERLAP, InputGeometry
from .global_branch import fusion_scale
from .global_fit import branch_record, calibrate_model, fit_branch_or_skip
from .imaging import DEFAULT_MAX_PIXELS
from .model_files import check_output_dir, read_metadata, save_model
from .recipe import augment_batch, augmentation, epoch_budget, min_steps_asked, record, teacher_cache, teacher_targets
from .scoring import DEFAULT_GUARD_BAND, frame_scores
from .stpm import STPM, pyramid_loss

# TrainingError and UnderCalibratedError are this module's API too
from .training_set import TrainingError, UnderCalibratedError, check_evidence, load_images, split_indices  # noqa: F401


@dataclass
class TrainConfig:
    """Everything besides the images that determines a trained model (with the teacher weights file's content).

    Defaults: the paper's optimiser, batch size and input size, with the differences listed in the module
    docstring (20 epochs, EfficientNet-Lite0, sigma 4). ``image_size`` and ``map_smoothing_sigma`` are in
    pixels of the model input; ``val_fraction`` is the share of the good images held out; the two rates
    are the calibration targets (:mod:`.calibration`); fewer held-out images than ``min_held_out_goods`` (or
    than 1/target) refuse the model unless ``allow_under_calibrated``; larger images than ``max_pixels``
    pixels are refused. ``input_mode``, ``max_aspect``, ``tile_scale`` (None: measured on the images) and
    ``tile_overlap`` are the input geometry (:meth:`geometry`). ``augment`` (with ``augment_flips``, ``augment_rot90``;
    off) and ``min_steps`` (0 here, 360 in the settings) are :mod:`.recipe`'s few-shot recipe and step budget;
    ``global_branch``: fit the image-level branch (:mod:`.global_fit`).
    """

    backbone: str = "efficientnet_lite0"
    teacher_weights: Path | None = None
    image_size: int = 256
    epochs: int = 20
    batch_size: int = 32
    lr: float = 0.4
    momentum: float = 0.9
    weight_decay: float = 1e-4
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "auto"
    target_false_reject_rate: float = 0.01
    pixel_false_positive_rate: float = 0.001
    min_held_out_goods: int = 20
    allow_under_calibrated: bool = False
    map_smoothing_sigma: float = 4.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    input_mode: str = DEFAULT_MODE
    max_aspect: float = DEFAULT_MAX_ASPECT
    tile_scale: float | None = None
    tile_overlap: float = DEFAULT_TILE_OVERLAP
    augment: bool = False
    augment_flips: bool = False
    augment_rot90: bool = False
    min_steps: int = 0
    global_branch: bool = True

    def geometry(self) -> InputGeometry:
        """The input geometry this recipe asks for. Raises ValueError: see :class:`.geometry.InputGeometry`."""
        return InputGeometry(self.input_mode, self.image_size, self.max_aspect, self.tile_scale, self.tile_overlap)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> TrainConfig:
        """The recipe the settings name: every ``[training]`` field, the ``[backbone]`` name and teacher weights,
        ``detector.device`` and ``detector.max_pixels``. ``overrides`` replace fields afterwards (a fine-tune's
        epochs, a command-line option), ``min_steps`` as :func:`.recipe.min_steps_asked` decides.

        Raises:
            TypeError: an override that is no field of TrainConfig.
        """
        names = {f.name for f in fields(cls)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"not TrainConfig fields: {sorted(unknown)}")
        values = {k: v for k, v in settings.training.model_dump().items() if k in names}
        values.update(backbone=settings.backbone.name, teacher_weights=settings.backbone.weights,
                      device=settings.detector.device, max_pixels=settings.detector.max_pixels)
        values.update(overrides)
        values["min_steps"] = min_steps_asked(values["min_steps"], settings.training.model_fields_set, overrides)
        return cls(**values)


@dataclass
class EpochReport:
    """Epoch ``epoch`` (from 1) of ``epochs`` finished: mean training and validation loss per image (Eq. 3),
    the best epoch so far, the epoch's seconds and the estimated seconds left."""

    epoch: int
    epochs: int
    loss: float
    val_loss: float
    best_epoch: int
    seconds: float
    eta_s: float


@dataclass
class TrainResult:
    """What :func:`train` produced: the model directory and its metadata."""

    model_dir: Path
    metadata: dict[str, Any]
    history: list[EpochReport] = field(default_factory=list)


class TrainingStopped(Exception):
    """Training was asked to stop (its ``stop`` event was set) before it finished."""


@torch.no_grad()
def evaluate_student(model: STPM, images: torch.Tensor, teacher_hat: list[torch.Tensor], device: torch.device,
                     batch: int) -> float:
    """Student in eval mode on uint8 (N, 3, S, S) images and their cached teacher stages -> mean loss per image
    (Eq. 3; selects the best epoch; scores for thresholds come from :func:`.scoring.frame_scores`)."""
    model.eval()
    total = 0.0
    for start in range(0, len(images), batch):
        x = to_model_layout(images[start : start + batch], device)
        t_hat = [t[start : start + batch].float() for t in teacher_hat]
        with autocast(device):
            s_hat = model.student_features(x)
        total += pyramid_loss(t_hat, s_hat).item()
    return total / len(images)


def train(
    image_paths: Sequence[Path],
    out_dir: Path,
    config: TrainConfig,
    *,
    init_student: dict[str, torch.Tensor] | None = None,
    on_epoch: Callable[[EpochReport], None] | None = None,
    progress: bool = True,
    extra_metadata: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
    held_out: Collection[str] = (),
) -> TrainResult:
    """Train an STPM student on good images and write the model directory ``out_dir``.

    Args:
        image_paths: defect-free images (any size and shape; prepared under ``config.geometry()``).
        out_dir: model directory to write (atomically replaced if it exists).
        config: recipe and calibration targets.
        init_student: student weights to fine-tune from; ``None`` trains from random initialisation.
        on_epoch: called after every epoch (the trainer service reports progress through it).
        progress: show a progress bar (epoch, loss, validation loss, time left) on stderr.
        extra_metadata: merged into ``model.json`` (e.g. the registry's ``version``).
        stop: when set (by a signal handler, say), training ends after the current batch and nothing is written.
        held_out: SHA-256 of images that must not be trained on (a fine-tune's parent's validation images):
            those among ``image_paths`` are held out, with more drawn to reach ``val_fraction``.
    Returns:
        the model directory and its metadata (thresholds, validation statistics, per-epoch history).
    Raises:
        TrainingError: fewer than 2 images, unusable images (each named), or a non-finite training loss.
        UnderCalibratedError: too few held-out images for the false-reject target (checked before training;
            see :func:`.training_set.check_evidence`), unless ``config.allow_under_calibrated``.
        WeightsNotFoundError: teacher weights absent. ValueError: unknown backbone or weights that do not fit it.
        RuntimeError: device ``cuda`` asked for and none present.
        ModelFileError: ``out_dir`` holds other files (checked before training starts).
        TrainingStopped: ``stop`` was set; ``out_dir`` is left as it was.
    """
    check_output_dir(out_dir)  # before minutes of training, not after them
    started = time.monotonic()
    device = resolve_device(config.device)
    paths = [Path(p) for p in image_paths]
    split_indices(len(paths), config.val_fraction, config.seed)  # fewer than 2 images: before reading them
    images = load_images(paths, config.geometry(), config.max_pixels)
    hashes = images.hashes
    keep_out = set(held_out)
    forced = [i for i, h in enumerate(hashes) if h in keep_out]
    train_idx, val_idx = split_indices(len(paths), config.val_fraction, config.seed, forced)
    if not config.allow_under_calibrated:
        check_evidence(len(paths), len(val_idx), len(forced), config.val_fraction,
                       config.target_false_reject_rate, config.min_held_out_goods)

    torch.manual_seed(config.seed)
    teacher, teacher_path = build_teacher(config.backbone, config.teacher_weights)
    student = build_student(config.backbone)
    if init_student is not None:
        student.load_state_dict(init_student, strict=True)
    model = STPM(backbone_spec(config.backbone), teacher, student, config.map_smoothing_sigma).to(device)
    model = model.to(memory_format=torch.channels_last)  # faster convolutions on CPUs and GPUs alike

    windows = images.windows(range(len(paths)))  # each image's model inputs, one unless tiled
    train_w, val_w = images.window_indices(train_idx), images.window_indices(val_idx)
    train_images, val_images = windows[train_w], windows[val_w]
    augment = augmentation(config.image_size, config.augment_flips, config.augment_rot90) if config.augment else None
    if augment is None:
        cache = teacher_cache(model, windows, device, config.batch_size)
        train_t = [c[torch.as_tensor(train_w, device=device)] for c in cache]
        val_t = [c[torch.as_tensor(val_w, device=device)] for c in cache]
        del cache
    else:  # augmented windows differ every step: their teacher targets are computed with them
        val_t = teacher_cache(model, val_images, device, config.batch_size)
    epochs = epoch_budget(config.epochs, config.min_steps, len(train_images), config.batch_size,
                          init_student is not None)

    optimizer = torch.optim.SGD(
        model.student.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    generator = torch.Generator().manual_seed(config.seed)
    best_state, best_val, best_epoch = None, math.inf, 0
    history: list[EpochReport] = []
    bar = tqdm(total=epochs, desc="train", unit="epoch", disable=not progress, dynamic_ncols=True)
    for epoch in range(1, epochs + 1):
        t0 = time.monotonic()
        model.train()
        running = 0.0
        order = torch.randperm(len(train_images), generator=generator)
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            if augment is None:
                x = to_model_layout(train_images[idx], device)
                t_hat = [t[idx.to(device)].float() for t in train_t]
            else:
                x = to_model_layout(augment_batch(augment, train_images[idx]), device)
                t_hat = teacher_targets(model, x, device)
            with autocast(device):
                s_hat = model.student_features(x)
            loss = pyramid_loss(t_hat, s_hat)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running += loss.item()
            if stop is not None and stop.is_set():
                bar.close()
                raise TrainingStopped(f"training stopped by request in epoch {epoch} of {epochs}; "
                                      f"nothing was written to {out_dir}")
        if not math.isfinite(running):
            raise TrainingError(f"training diverged at epoch {epoch} (loss {running}); lower the learning rate")
        val_loss = evaluate_student(model, val_images, val_t, device, config.batch_size)
        if val_loss < best_val:
            best_val, best_epoch = val_loss, epoch
            best_state = copy.deepcopy(model.student.state_dict())
        seconds = time.monotonic() - t0
        mean_epoch = (time.monotonic() - started) / epoch
        report = EpochReport(epoch, epochs, running / len(train_images), val_loss, best_epoch, seconds,
                             mean_epoch * (epochs - epoch))
        history.append(report)
        bar.set_postfix(loss=f"{report.loss:.4f}", val=f"{val_loss:.4f}", best=best_epoch)
        bar.update(1)
        if on_epoch is not None:
            on_epoch(report)
    bar.close()

    assert best_state is not None
    model.student.load_state_dict(best_state)
    model.eval()
    val_frames = [images.frames[i] for i in val_idx]
    branch, skipped = (fit_branch_or_skip(model, train_images, device, config.batch_size) if config.global_branch
                       else (None, None))
    thresholds, held_out = calibrate_model(model, val_frames, device, config.target_false_reject_rate, config.
                                           pixel_false_positive_rate, config.min_held_out_goods, config.batch_size)
    val_scores = held_out.local_scores  # STPM's: what thresholds.image was set on (the manifest's scores)
    if branch is not None:
        model.global_branch.scale = fusion_scale(thresholds)
    # Reduced precision is measured, not calibrated on: on a GPU its shift on the held-out goods' image scores widens
    # the guard band within which a bfloat16/float16 scorer re-scores in float32 (scoring module docstring). The CPU
    # serves float32, and its emulated bfloat16 is slow, so there the default band stands.
    reduced = precision_of(device)
    shift = None if reduced == "float32" else float(np.max(np.abs(
        frame_scores(model, val_frames, device, reduced, config.batch_size).scores / held_out.scores - 1)))
    role = np.full(len(paths), "train", dtype=object)
    role[val_idx] = "val"
    score = np.full(len(paths), np.nan)
    score[val_idx] = val_scores
    spec = backbone_spec(config.backbone)
    metadata: dict[str, Any] = {
        "backbone": config.backbone,
        "teacher_weights": {"file": teacher_path.name, "sha256": sha256_file(teacher_path)},
        "image_size": config.image_size,
        "input": images.geometry.as_dict(),
        "normalization": {"input": "RGB uint8 / 255", "mean": list(spec.mean), "std": list(spec.std)},
        "pyramid": {"strides": [4, 8, 16], "channels": list(model.student.channels)},
        "map_smoothing_sigma": config.map_smoothing_sigma,
        "thresholds": thresholds,
        "precision": {"calibrated": "float32", "reduced": reduced, "max_relative_shift": shift,
                      "guard_band": max(DEFAULT_GUARD_BAND, 4 * (shift or 0.0)),
                      "serving": "float32 within guard_band of the image threshold, else the device's autocast"},
        "validation": {"loss": best_val, "image_score": score_statistics(held_out.scores)},  # fused; drift reference
        "frame_statistics": reference_statistics(images.frames),  # of every good image: the drift reference (drift.py)
        "training": {
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "device": str(device),
            "best_epoch": best_epoch,
            "fine_tuned": init_student is not None,
            "few_shot": record(config.augment, config.augment_flips, config.augment_rot90, config.epochs, epochs,
                               config.min_steps, len(train_images), config.batch_size),
            "duration_s": round(time.monotonic() - started, 2),
            "history": [asdict(h) for h in history],
        },
        "manifest": [  # held-out images with the score their threshold was calibrated on
            {"path": str(p), "sha256": h, "role": r, **({"score": float(score[i])} if r == "val" else {})}
            for i, (p, h, r) in enumerate(zip(paths, hashes, role, strict=True))
        ],
        "linewatch_version": linewatch.__version__,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
        **branch_record(model, held_out, branch, skipped), **(extra_metadata or {}),
    }
    model_dir = save_model(out_dir, model.student.state_dict(), metadata, branch and (branch.mean, branch.precision))
    return TrainResult(model_dir=model_dir, metadata=read_metadata(model_dir), history=history)

