"""Which good images train the student and which are held out to calibrate its threshold, and whether the
held-out ones are enough evidence for the false-reject target (:mod:`.calibration`)."""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from linewatch.contracts.files import sha256_bytes

from .calibration import held_out_goods_needed
from .imaging import DEFAULT_MAX_PIXELS, ImageError, read_image, to_model_input


class TrainingError(ValueError):
    """Training cannot start with what was given (too few images, ...)."""


class UnderCalibratedError(TrainingError):
    """Too few held-out good images for the false-reject target; the message (one line) says how many more
    good images are needed."""


def load_images(paths: Sequence[Path], size: int,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[torch.Tensor, list[str]]:
    """Read, check and resize images in parallel -> (uint8 (N, 3, size, size), SHA-256 of each file).

    Raises:
        TrainingError: some files cannot be used; the message names each of them (the first 20) and why,
            so that one run finds them all.
    """

    def one(path: Path) -> tuple[np.ndarray, str] | ImageError:
        try:
            rgb = read_image(path, max_pixels)
        except ImageError as exc:
            return exc
        return to_model_input(rgb, size), sha256_bytes(Path(path).read_bytes())

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(one, paths))
    bad = [r for r in results if isinstance(r, ImageError)]
    if bad:
        listed = "\n  ".join(str(e) for e in bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise TrainingError(f"{len(bad)} of {len(paths)} images cannot be used; fix or remove them:\n  {listed}")
    return torch.from_numpy(np.stack([r[0] for r in results])), [r[1] for r in results]


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
