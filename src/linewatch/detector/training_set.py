"""Which good images train the student and which are held out to calibrate its threshold, and whether the
held-out ones are enough evidence for the false-reject target (:mod:`.calibration`)."""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from linewatch.contracts.files import sha256_file

from .calibration import held_out_goods_needed
from .geometry import FrameInput, InputGeometry, model_inputs
from .imaging import DEFAULT_MAX_PIXELS, ImageError, exif_orientation, probe_image, read_image


class TrainingError(ValueError):
    """Training cannot start with what was given (too few images, ...)."""


class UnderCalibratedError(TrainingError):
    """Too few held-out good images for the false-reject target; the message (one line) says how many more
    good images are needed."""


@dataclass
class TrainingImages:
    """Good images ready for the model: per image its :class:`.geometry.FrameInput` (``frames``) and the SHA-256
    of its file (``hashes``), and the ``geometry`` they were prepared under (its tile scale measured on them)."""

    frames: list[FrameInput]
    hashes: list[str]
    geometry: InputGeometry

    def windows(self, images: Sequence[int]) -> torch.Tensor:
        """The model inputs of the images at indices ``images``, in that order -> uint8 (T, 3, S, S)."""
        return torch.from_numpy(np.concatenate([self.frames[i].tiles for i in images]))

    def window_indices(self, images: Sequence[int]) -> np.ndarray:
        """Where the windows of the images at indices ``images`` are in ``windows(range(len(frames)))`` -> int64."""
        first = np.cumsum([0] + [len(f.plan.windows) for f in self.frames])
        return np.concatenate([np.arange(first[i], first[i + 1]) for i in images]).astype(np.int64)


def load_images(paths: Sequence[Path], geometry: InputGeometry,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> TrainingImages:
    """Read, check and prepare images in parallel under ``geometry`` (:func:`.geometry.model_inputs`), with its
    tile scale measured on their sizes when it tiles without one (:meth:`.geometry.InputGeometry.resolved`).

    Raises:
        TrainingError: some files cannot be used; the message names each of them (the first 20) and why,
            so that one run finds them all.
    """

    def size(path: Path) -> tuple[int, int] | None:
        try:
            data = Path(path).read_bytes()
            _, w, h = probe_image(data, str(path), max_pixels)
        except (OSError, ImageError):
            return None  # named with its reason below
        return (w, h) if exif_orientation(data) in (5, 6, 7, 8) else (h, w)  # upright, as decoded

    def one(path: Path) -> tuple[FrameInput, str] | ImageError:
        try:
            return model_inputs(read_image(path, max_pixels), geometry, str(path)), sha256_file(path)
        except ImageError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sizes = [s for s in pool.map(size, paths) if s is not None]
        if sizes:
            geometry = geometry.resolved(sizes)
        results = list(pool.map(one, paths))
    bad = [r for r in results if isinstance(r, ImageError)]
    if bad:
        listed = "\n  ".join(str(e) for e in bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise TrainingError(f"{len(bad)} of {len(paths)} images cannot be used; fix or remove them:\n  {listed}")
    return TrainingImages([r[0] for r in results], [r[1] for r in results], geometry)


def held_out_count(n: int, val_fraction: float, forced: int = 0) -> int:
    """How many of ``n`` images :func:`split_indices` holds out: ``round(n * val_fraction)``, at least 1 and
    ``forced``, at most n - 1."""
    return max(forced, min(n - 1, max(1, round(n * val_fraction))))


def split_indices(n: int, val_fraction: float, seed: int,
                  forced: Collection[int] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split of ``n`` images into (train, validation) index arrays; both non-empty.

    ``forced``: indices that must be held out (a fine-tune's parent's validation images, so that the
    threshold is never calibrated on images either model trained on); more are drawn at random up to
    :func:`held_out_count`.

    Raises:
        TrainingError: fewer than 2 images, or nothing left to train on.
    """
    if n < 2:
        raise TrainingError(f"need at least 2 good images to train and validate, got {n}")
    keep_out = np.unique(np.asarray(list(forced), dtype=np.int64))
    n_val = held_out_count(n, val_fraction, len(keep_out))
    if n_val >= n:
        raise TrainingError(f"all {n} images are the parent model's held-out images; add good images to train on")
    order = np.random.default_rng(seed).permutation(np.setdiff1d(np.arange(n), keep_out))
    extra = n_val - len(keep_out)
    return np.sort(order[extra:]), np.sort(np.concatenate([keep_out, order[:extra]]))


def check_evidence(n: int, n_val: int, forced: int, val_fraction: float, target_rate: float, minimum: int) -> None:
    """Refuse a training whose ``n_val`` held-out images (of ``n``) cannot support ``target_rate``.

    Raises:
        UnderCalibratedError: ``n_val < max(ceil(1 / target_rate), minimum)``; the one-line message says how
            many more good images (at ``val_fraction``) would be enough, and how to publish anyway.
    """
    needed = held_out_goods_needed(target_rate, minimum)
    if n_val >= needed:
        return
    # held_out_count grows about n * val_fraction (val_fraction > 0): start near the answer, then step to it
    more = max(1, math.floor((needed - 0.5) / val_fraction) - n - 1)
    while more > 1 and held_out_count(n + more - 1, val_fraction, forced) >= needed:
        more -= 1
    while held_out_count(n + more, val_fraction, forced) < needed:
        more += 1
    raise UnderCalibratedError(
        f"not published: {n_val} held-out good image{'s' if n_val != 1 else ''} cannot show a false-reject rate "
        f"of {target_rate:g} (needed: {needed}, the larger of 1/target and training.min_held_out_goods "
        f"{minimum}); add {more} more good images (val_fraction {val_fraction:g}), or force it "
        "(--force, training.allow_under_calibrated) to publish it marked under-calibrated")
