"""Frame statistics for lighting and exposure drift: cheap numbers about how a frame is lit, not what it shows.

Computed on the model input (:func:`.geometry.model_inputs`, the one preparation training, evaluation and the
workers share, on the CPU and on the device alike; a tiled frame's windows side by side, :func:`input_statistics`),
shrunk by area averaging to at most :data:`STATS_SIDE` pixels a side, so a frame and the training images go
through exactly the same steps. Luma is ITU-R BT.601
(``0.299 R + 0.587 G + 0.114 B``, float), 0..255.

======================  ==================================================================================
statistic               what it is (units)
======================  ==================================================================================
``brightness``          mean luma (0..255)
``contrast``            standard deviation of luma (0..255)
``red_green``           colour balance: (mean R + 1) / (mean G + 1)
``blue_green``          colour balance: (mean B + 1) / (mean G + 1)
``sharpness``           ln(1 + variance of the 3x3 Laplacian of luma) (Pech-Pacheco et al. 2000, "Diatom
                        autofocusing in brightfield microscopy"; the log makes a gain of k a shift of 2 ln k)
``saturated``           share of pixels with luma >= 250 (highlights clipped by over-exposure), 0..1
``dark``                share of pixels with luma <= 5 (shadows crushed by under-exposure), 0..1
``left_right``          spatial profile: mean of the right half minus the left half of a 4x4 grid of luma
                        means, in units of the frame's mean luma (a lamp on one side going weak)
``top_bottom``          the same, bottom half minus top half
``border``              mean luma of the 12 border cells of that grid (0..255): vignetting, a ring light or
                        a lamp pair losing power at the frame's edges
======================  ==================================================================================

The 4x4 grid's cells are not compared one by one: a defect on the part moves single cells, while uneven lighting
moves whole halves or the border. On MVTec bottle (reference: 24 good images), the cells one by one put half the
contaminated bottles beyond 4 training spreads, and so did the border against the centre (the part's middle);
with the border's own brightness, 2 of 21 contaminated and 1 of 20 broken_large bottles go beyond 5.

Cost: about 0.5 ms per frame on one CPU core, at 128 or 256 px (``tests/test_drift.py`` prints it), in the
workers' decode threads, beside a decode of several ms and a model of tens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch

from .geometry import FrameInput

STATS_SIDE = 128
STAT_NAMES = ("brightness", "contrast", "red_green", "blue_green", "sharpness", "saturated", "dark", "left_right",
              "top_bottom", "border")
REFERENCE_FORMAT = "linewatch-frame-stats/1"
_BORDER = np.ones((4, 4), dtype=bool)
_BORDER[1:3, 1:3] = False


def frame_statistics(model_input: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Statistics of one uint8 (3, S, S) RGB model input (NumPy, or a tensor on any device) -> name -> value
    (:data:`STAT_NAMES`, units in the module docstring).

    Raises:
        ValueError: not a uint8 (3, H, W) image.
    """
    x = model_input.detach().cpu().numpy() if isinstance(model_input, torch.Tensor) else np.asarray(model_input)
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a uint8 (3, H, W) model input, got {x.dtype} {x.shape}")
    h, w = x.shape[1:]
    scale = STATS_SIDE / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # Plane by plane: each is contiguous, while making the (3, H, W) input (H, W, 3) costs more than all the rest.
    r, g, b = (cv2.resize(x[c], size, interpolation=cv2.INTER_AREA).astype(np.float32) if scale < 1 else
               x[c].astype(np.float32) for c in range(3))
    luma = cv2.addWeighted(cv2.addWeighted(r, 0.299, g, 0.587, 0.0), 1.0, b, 0.114, 0.0)
    mean, std = (float(v[0, 0]) for v in cv2.meanStdDev(luma))
    laplacian_std = float(cv2.meanStdDev(cv2.Laplacian(luma, cv2.CV_32F))[1][0, 0])
    grid = cv2.resize(luma, (4, 4), interpolation=cv2.INTER_AREA) / max(mean, 1.0)
    r_mean, g_mean, b_mean = (cv2.mean(plane)[0] for plane in (r, g, b))
    return {
        "brightness": mean,
        "contrast": std,
        "red_green": (r_mean + 1) / (g_mean + 1),
        "blue_green": (b_mean + 1) / (g_mean + 1),
        "sharpness": math.log1p(laplacian_std**2),
        "saturated": float(np.count_nonzero(luma >= 250)) / luma.size,
        "dark": float(np.count_nonzero(luma <= 5)) / luma.size,
        "left_right": float(grid[:, 2:].mean() - grid[:, :2].mean()),
        "top_bottom": float(grid[2:].mean() - grid[:2].mean()),
        "border": float(grid[_BORDER].mean()) * max(mean, 1.0),
    }


def input_statistics(frame: FrameInput) -> dict[str, float]:
    """:func:`frame_statistics` of a frame's model input (:class:`.geometry.FrameInput`): its one window, or its
    windows (T, 3, S, S) side by side as one (3, S, T x S) image (a tiled strip's statistics are of all of it)."""
    tiles = frame.tiles
    if len(tiles) == 1:
        return frame_statistics(tiles[0])
    if isinstance(tiles, torch.Tensor):
        return frame_statistics(torch.cat(list(tiles), dim=2))
    return frame_statistics(np.concatenate(list(tiles), axis=2))


def reference_statistics(images: Sequence[FrameInput] | np.ndarray | torch.Tensor) -> dict[str, Any]:
    """The drift reference of good images, their model inputs (:class:`.geometry.FrameInput`, through
    :func:`input_statistics`, or uint8 (N, 3, S, S) single windows) -> the ``frame_statistics`` entry of
    model.json: per statistic the ``median``, the ``spread`` (1.4826 x the median absolute deviation, which
    estimates the standard deviation of normally distributed values without being moved by a few odd images),
    ``min`` and ``max``; with ``format``, ``side`` and the number of ``images``.

    Raises:
        ValueError: no images, or not uint8 (N, 3, H, W).
    """
    if len(images) == 0:
        raise ValueError("no images to take reference statistics from")
    stats = [input_statistics(f) if isinstance(f, FrameInput) else frame_statistics(f) for f in images]
    values = np.array([[s[n] for n in STAT_NAMES] for s in stats], dtype=np.float64)
    median = np.median(values, axis=0)
    spread = 1.4826 * np.median(np.abs(values - median), axis=0)
    return {
        "format": REFERENCE_FORMAT,
        "side": STATS_SIDE,
        "images": len(values),
        "statistics": {n: {"median": float(median[i]), "spread": float(spread[i]), "min": float(values[:, i].min()),
                           "max": float(values[:, i].max())} for i, n in enumerate(STAT_NAMES)},
    }
