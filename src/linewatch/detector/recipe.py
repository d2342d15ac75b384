"""The few-shot part of the training recipe: augmentations that keep a good part good, and an epoch budget by
image count. Augmentation is off by default. The epoch budget is off in :class:`.training.TrainConfig` (where every
number is explicit) and on in the settings' recipe (``[training] min_steps`` 360), except where the epochs were set.

**Augmentations** (``augment``; torchvision.transforms.v2, drawn per training window and per step, from the global
torch generator that :func:`.training.train` seeds): a small translation, up to :data:`TRANSLATE` of the side with
the window's edge mirrored in (``RandomCrop`` with reflect padding: no black border the student would learn), then a
small photometric jitter, brightness and contrast by up to :data:`PHOTOMETRIC` (``ColorJitter``; no hue or
saturation change, since a colour change can be the defect). 5% of a mid-grey of 137 is 6.9 grey levels, within
what the lighting-drift check (:mod:`.drift`) accepts as the training lighting (``z_threshold`` 5 x ``min_spread``
0.01 x 137 = 6.9), so the student learns no lighting the line would call drift. Flips (horizontal and vertical) and
rotations by multiples of 90 degrees only when ``augment_flips`` / ``augment_rot90`` allow them: on many parts
orientation matters (a label, a thread, a connector on one side), and a mirrored good part would teach the student
that the mirrored part is good. The held-out images, their thresholds and the frame statistics (the drift
reference) are never augmented. With augmentation the teacher runs on every augmented batch (its features of the
plain images cannot be reused): about 1.3x the time per step (bench/README.md, speed).

**Epoch budget** (``min_steps``): with few images an epoch is one SGD step, and 20 epochs are 20 steps where they
are 120 on MVTec bottle (167 training images in batches of 32) and 360 to 400 on Magnetic Tile (571 images, 620
windows under the ``auto`` geometry). The rule: ``epochs = max(epochs, ceil(min_steps / steps_per_epoch))``,
``steps_per_epoch = ceil(training windows / batch_size)``; so a set large enough to reach ``min_steps`` in its epochs
trains exactly as before. A fine-tune starts from a trained student and keeps its epochs. The settings' default, 360,
is about Magnetic Tile's 20 epochs: MVTec bottle then trains 60 epochs instead of 20, and its held-out goods' loss
fell from 0.39 (epoch 20) to 0.18 (epoch 59, the best); on its test set pixel AUROC 0.988 -> 0.992 and AU-PRO
0.968 -> 0.976 (bench/README.md). An epoch count set explicitly is trained as set
(:func:`min_steps_asked`, applied by :meth:`.training.TrainConfig.from_settings`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

import torch
from torchvision.transforms import v2

from .devices import autocast, to_model_layout

PHOTOMETRIC = 0.05  # brightness and contrast factors drawn in [0.95, 1.05]
TRANSLATE = 1 / 32  # of the window's side: 8 px of 256


def epoch_budget(epochs: int, min_steps: int, windows: int, batch_size: int, fine_tune: bool) -> int:
    """Epochs to train: ``epochs``, raised so that ``windows`` training windows in batches of ``batch_size`` make at
    least ``min_steps`` SGD steps (rule in the module docstring); ``epochs`` unchanged for a fine-tune or
    ``min_steps`` 0.

    Raises:
        ValueError: no windows, or a batch size below 1.
    """
    if windows < 1 or batch_size < 1:
        raise ValueError(f"need at least one window and a batch size of 1 or more, got {windows} and {batch_size}")
    if fine_tune or min_steps <= 0:
        return epochs
    return max(epochs, math.ceil(min_steps / math.ceil(windows / batch_size)))


def min_steps_asked(min_steps: int, given: Collection[str], overrides: Mapping[str, Any]) -> int:
    """The ``min_steps`` to train with: 0 where an epoch count was asked for and ``min_steps`` was not (``--epochs 1``
    is one epoch), else ``min_steps``. ``given``: the ``[training]`` fields the settings' sources set (pydantic's
    ``model_fields_set``: a file, the environment); ``overrides``: a command line's or a fine-tune's, which beat the
    sources, as a command line beats a file."""
    epochs_asked = "epochs" in overrides or ("epochs" in given and "min_steps" not in given)
    return 0 if epochs_asked and "min_steps" not in overrides else min_steps


def describe_budget(epochs: int, min_steps: int) -> str:
    """The epochs a recipe trains from scratch, in words: "20 epochs", or "at least 20 epochs and 360 SGD steps"
    where the step budget may raise them (:func:`epoch_budget`; a fine-tune keeps its epochs)."""
    return f"at least {epochs} epochs and {min_steps} SGD steps" if min_steps > 0 else f"{epochs} epochs"


def augmentation(size: int, flips: bool, rot90: bool) -> v2.Compose:
    """The augmentation of one uint8 (3, ``size``, ``size``) window (module docstring): translation, brightness and
    contrast jitter, and flips / quarter turns where allowed."""
    steps: list[v2.Transform] = [v2.RandomCrop(size, padding=max(1, round(TRANSLATE * size)), padding_mode="reflect")]
    if flips:
        steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if rot90:
        steps.append(v2.RandomChoice([v2.Lambda(lambda x, k=k: torch.rot90(x, k, dims=(-2, -1))) for k in range(4)]))
    steps.append(v2.ColorJitter(brightness=PHOTOMETRIC, contrast=PHOTOMETRIC))
    return v2.Compose(steps)


def augment_batch(transform: v2.Compose, windows: torch.Tensor) -> torch.Tensor:
    """Each uint8 (3, S, S) window of ``windows`` (N, 3, S, S) through ``transform`` with its own random draw (v2
    draws once per call, so a batch in one call would move every window alike) -> uint8 (N, 3, S, S)."""
    return torch.stack([transform(w) for w in windows])


@torch.no_grad()
def teacher_cache(model: Any, images: torch.Tensor, device: torch.device, batch: int) -> list[torch.Tensor]:
    """Normalised teacher stages of all uint8 (N, 3, S, S) ``images``, float16, on ``device``: [(N, C_i, h_i, w_i)]
    (the frozen teacher sees the same images every epoch, so without augmentation they are computed once)."""
    chunks: list[list[torch.Tensor]] = []
    for start in range(0, len(images), batch):
        x = to_model_layout(images[start : start + batch], device)
        with autocast(device):
            chunks.append([f.half() for f in model.teacher_features(x)])
    return [torch.cat(stage) for stage in zip(*chunks, strict=True)]


@torch.no_grad()
def teacher_targets(model: Any, x: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """The teacher's normalised stages of a model-layout batch ``x``, float32: an augmented batch's targets."""
    with autocast(device):
        return [f.float() for f in model.teacher_features(x)]


def record(augment: bool, flips: bool, rot90: bool, epochs_asked: int, epochs: int, min_steps: int,
           windows: int, batch_size: int) -> dict[str, Any]:
    """model.json's ``training.few_shot``: what was augmented and how many epochs and steps the budget gave."""
    steps = math.ceil(windows / batch_size)
    return {
        "augmentation": {"translate": TRANSLATE, "brightness": PHOTOMETRIC, "contrast": PHOTOMETRIC,
                         "flips": flips, "rot90": rot90} if augment else None,
        "epoch_budget": {"epochs_asked": epochs_asked, "min_steps": min_steps, "training_windows": windows,
                         "steps_per_epoch": steps, "epochs": epochs, "steps": steps * epochs},
    }
