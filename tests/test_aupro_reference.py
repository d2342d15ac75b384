"""AU-PRO of :mod:`linewatch.detector.metrics` against a port of MVTec's reference evaluation code.

The reference is the MVTec AD evaluation code (Bergmann et al., IJCV 2021; the scripts MVTec publishes
with the dataset, ``pro_curve_util.py: compute_pro`` and ``generic_util.py: trapezoid``; public copies,
e.g. github.com/IHPCMember/IGAF). ``_reference_pro_curve`` and ``_reference_trapezoid`` below re-state
that code step by step, keeping every detail that can change a result:

* ground-truth regions: ``scipy.ndimage.label`` with a 3x3 structure of ones (8-connected);
* every pixel carries an FPR increment (1 for a good pixel) and a PRO increment (1 / size of its
  region, 0 for a good pixel); pixels are sorted by anomaly score, highest first, with
  ``np.argsort(...)[::-1]``, and the increments are summed cumulatively;
* the FPR sums are cast to float32 before dividing by the number of good pixels (as the reference
  does), the PRO sums stay float64 and are divided by the number of regions;
* of each run of equal scores only the last point is kept (the point after the whole run);
* both coordinates are clipped to at most 1, and (0, 0) and (1, 1) are added at the ends;
* ``trapezoid``: where ``x_max`` is not one of the x values, y is linearly interpolated at ``x_max``
  between the last point below it and the first point above it and that piece is added; the points
  with x <= x_max are integrated with the trapezoidal rule.

One adaptation: the reference stacks the maps with ``np.array(anomaly_maps)`` and so needs all images
to have one size; the port concatenates the flattened images instead, which orders the pixels in the
same way and allows images of different sizes.

Ties: the reference's argsort is not stable, so the order inside a run of equal scores is arbitrary.
It cannot matter: only the last point of each run is kept, and the cumulative sums there include
every pixel of the run whatever their order (the float64 PRO sum can differ in its last bits).
"""

from bisect import bisect

import numpy as np
import pytest
from scipy import ndimage

from linewatch.detector.metrics import PixelSet, au_pro

TOLERANCE = 1e-6  # float32 rounding (FPR in the reference, 1/region size in ours) is below 1e-7


def _reference_pro_curve(anomaly_maps, ground_truth_maps):
    """(FPRs, PROs) as MVTec's ``compute_pro`` returns them (see the module docstring)."""
    structure = np.ones((3, 3), dtype=int)
    fp_increments, pro_increments = [], []
    n_good, n_regions = 0, 0
    for gt in ground_truth_maps:
        labeled, count = ndimage.label(gt, structure)
        n_regions += count
        good = labeled == 0
        n_good += int(good.sum())
        fp_increments.append(good.astype(np.uint32).ravel())
        pro = np.zeros(gt.shape, dtype=np.float64)
        for k in range(1, count + 1):
            region = labeled == k
            pro[region] = 1.0 / region.sum()
        pro_increments.append(pro.ravel())
    scores = np.concatenate([np.asarray(a).ravel() for a in anomaly_maps])
    order = np.argsort(scores)[::-1]
    scores = scores[order]
    fprs = np.cumsum(np.concatenate(fp_increments)[order]).astype(np.float32) / np.float32(n_good)
    pros = np.cumsum(np.concatenate(pro_increments)[order]) / n_regions
    last_of_run = np.append(np.diff(scores) != 0, True)
    fprs, pros = np.minimum(fprs[last_of_run], 1.0), np.minimum(pros[last_of_run], 1.0)
    return np.concatenate(([0.0], fprs, [1.0])), np.concatenate(([0.0], pros, [1.0]))


def _reference_trapezoid(x, y, x_max):
    """MVTec's ``trapezoid(x, y, x_max)``: area under the curve from x[0] to ``x_max`` (see the module docstring)."""
    x, y = np.asarray(x), np.asarray(y)
    finite = np.isfinite(x) & np.isfinite(y)
    x, y = x[finite], y[finite]
    correction = 0.0
    if x_max not in x:
        i = bisect(x, x_max)  # first index with x > x_max
        assert 0 < i < len(x)
        y_at_max = y[i - 1] + (y[i] - y[i - 1]) * (x_max - x[i - 1]) / (x[i] - x[i - 1])
        correction = 0.5 * (y_at_max + y[i - 1]) * (x_max - x[i - 1])
    inside = x <= x_max
    x, y = x[inside], y[inside]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def _reference_au_pro(masks, maps, fpr_limit=0.3):
    fprs, pros = _reference_pro_curve(maps, masks)
    return _reference_trapezoid(fprs, pros, fpr_limit) / fpr_limit


def _blobs(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A mask of 0-4 blobs: discs, rectangles, and pixels that touch only diagonally."""
    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(0, 5))):
        kind = rng.integers(3)
        cy, cx = int(rng.integers(h)), int(rng.integers(w))
        if kind == 0:
            r = rng.uniform(0.8, max(1.0, min(h, w) / 4))
            mask |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        elif kind == 1:
            mask[cy : cy + int(rng.integers(1, 6)), cx : cx + int(rng.integers(1, 6))] = True
        else:
            for step in range(int(rng.integers(1, 4))):  # a diagonal line: one 8-connected region
                mask[min(cy + step, h - 1), min(cx + step, w - 1)] = True
    return mask


def _random_case(seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """1-5 images of different sizes, at least one defect-free, maps correlated with the masks, with ties."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 6))
    masks = [_blobs(rng, (int(rng.integers(6, 33)), int(rng.integers(6, 33)))) for _ in range(n)]
    masks.append(np.zeros((int(rng.integers(6, 33)), int(rng.integers(6, 33))), dtype=bool))  # a good image
    if not any(m.any() for m in masks):
        masks[0][0, 0] = True
    strength = rng.uniform(0.0, 2.0)
    levels = rng.choice([0, 4, 10, 50])  # 0: continuous values; else quantised, so many ties
    maps = []
    for m in masks:
        amap = ndimage.gaussian_filter(rng.random(m.shape) + strength * m, sigma=rng.uniform(0, 1.5))
        if levels:
            amap = np.round(amap * levels) / levels
        maps.append(amap.astype(np.float32))  # evaluation passes float32 maps (see ScoredSample)
    return masks, maps


@pytest.mark.parametrize("seed", range(30))
def test_au_pro_equals_mvtec_reference_on_random_cases(seed):
    masks, maps = _random_case(seed)
    pixels = PixelSet(masks, maps)
    for limit in (0.3, 0.05, 0.5, 1.0):
        assert pixels.au_pro(fpr_limit=limit) == pytest.approx(_reference_au_pro(masks, maps, limit),
                                                               abs=TOLERANCE), limit
    # A subset of the images (as evaluation does per defect type) against the reference on that subset alone.
    subset = [i for i in range(len(masks)) if i % 2 == 0 or i == len(masks) - 1]
    if any(masks[i].any() for i in subset):
        expected = _reference_au_pro([masks[i] for i in subset], [maps[i] for i in subset])
        assert pixels.au_pro(subset) == pytest.approx(expected, abs=TOLERANCE)


def test_au_pro_equals_reference_when_every_pixel_ties():
    masks = [np.eye(8, dtype=bool), np.zeros((5, 9), dtype=bool)]
    maps = [np.full((8, 8), 0.5, np.float32), np.full((5, 9), 0.5, np.float32)]
    # One threshold: the curve goes straight from (0, 0) to (1, 1); the area up to 0.3 is 0.045.
    assert au_pro(masks, maps) == pytest.approx(_reference_au_pro(masks, maps), abs=1e-12)
    assert au_pro(masks, maps) == pytest.approx(0.045 / 0.3)


def test_float64_maps_are_compared_at_float32_precision():
    # PixelSet stores map values as float32 (evaluation's maps are float32 already, so nothing is lost there).
    # Float64 values that round to one float32 value are one threshold: the result is the reference's on the
    # float32-rounded maps. Noise far below float32 resolution turns ties into near-ties that the reference,
    # fed float64, orders arbitrarily; ours keeps them tied.
    masks, maps = _random_case(0)
    rng = np.random.default_rng(1)
    maps64 = [m.astype(np.float64) + rng.normal(0.0, 1e-10, m.shape) for m in maps]
    expected = _reference_au_pro(masks, [m.astype(np.float32) for m in maps64])
    assert au_pro(masks, maps64) == pytest.approx(expected, abs=TOLERANCE)
