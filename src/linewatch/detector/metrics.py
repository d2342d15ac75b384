"""The metrics the STPM paper reports on MVTec AD, computed as MVTec's evaluation code defines them.

* image-level AUROC, the image score being the anomaly map's maximum (of the smoothed map, :mod:`.stpm`);
* pixel-level AUROC over every pixel of every test image at its original resolution;
* AU-PRO, MVTec's per-region overlap curve (Bergmann et al., IJCV 2021, Sec. 5.2; the reference
  ``compute_pro`` and ``trapezoid`` of the MVTec AD evaluation code): ground-truth regions are
  8-connected components (scipy), every distinct map value is a threshold, the curve is integrated up
  to a false-positive rate of 0.3 with the end point linearly interpolated, and divided by 0.3 so that
  a perfect detector scores 1. ``tests/test_aupro_reference.py`` checks it against a port of that code.

The STPM authors' released evaluation (github.com/gdwang08/STFPM, ``evaluate.py``) differs: it scores
pixels at 256x256 with the masks resized, and its PRO (taken from DFR) samples 4000 evenly spaced
thresholds and min-max rescales both the FPRs up to 0.3 and the PRO values before integrating, so the
paper's PRO figures are not this AU-PRO.

Pixel metrics share one sort of all pixels (:class:`PixelSet`): a bottle test set is 67 million
pixels, and scikit-learn's ``roc_auc_score`` spends about 30 s sorting them on every call (overall
and once per defect type). Sorted once here, every subset is a linear pass. The pixel AUROC is the
same trapezoidal ROC area scikit-learn computes; a test checks the two agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.integrate import trapezoid
from sklearn.metrics import roc_auc_score

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def image_auroc(is_defect: Sequence[bool], scores: Sequence[float]) -> float:
    """Image-level AUROC of N labels (True = defective) against N image scores (any unit) -> float in [0, 1].

    Raises:
        ValueError: only one class present.
    """
    return float(roc_auc_score(np.asarray(is_defect, dtype=bool), np.asarray(scores, dtype=np.float64)))


class PixelSet:
    """All pixels of a set of images, sorted once by anomaly-map value, for pixel-level metrics.

    Map values are stored as float32: nothing is lost for the float32 maps evaluation produces, and
    float64 values that round to the same float32 value count as one threshold
    (``tests/test_aupro_reference.py`` shows both).

    Args:
        masks: bool (H_i, W_i) ground truth per image (True = defective pixel); images may differ in size.
        maps: float (H_i, W_i) anomaly maps of the same shapes.
    Raises:
        ValueError: counts or shapes differ.
    """

    def __init__(self, masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]):
        if len(masks) != len(maps):
            raise ValueError(f"{len(masks)} masks but {len(maps)} maps")
        n = 0
        for i, (m, a) in enumerate(zip(masks, maps, strict=True)):
            if np.shape(m) != np.shape(a):
                raise ValueError(f"image {i}: mask shape {np.shape(m)} differs from map shape {np.shape(a)}")
            n += np.size(m)
        scores = np.empty(n, dtype=np.float32)
        image = np.empty(n, dtype=np.uint16 if len(masks) < 65536 else np.uint32)
        region_weight = np.empty(n, dtype=np.float32)  # 1 / size of the pixel's region, 0 outside regions
        self.regions_per_image = np.zeros(len(masks), dtype=np.int64)
        offset = 0
        for i, (mask, amap) in enumerate(zip(masks, maps, strict=True)):
            labels, count = ndimage.label(np.asarray(mask, dtype=bool), structure=EIGHT_CONNECTED)
            flat = labels.ravel()
            sizes = np.bincount(flat, minlength=count + 1).astype(np.float32)
            sizes[0] = np.inf
            end = offset + flat.size
            scores[offset:end] = np.asarray(amap, dtype=np.float32).ravel()
            image[offset:end] = i
            region_weight[offset:end] = 1.0 / sizes[flat]
            self.regions_per_image[i] = count
            offset = end
        order = np.argsort(scores)[::-1]  # highest first; ties are merged below, so stability is moot
        self.scores = scores[order]
        del scores
        self.image = image[order]
        self.region_weight = region_weight[order]
        self.n_images = len(masks)
        # A threshold takes every pixel at its value: the curves have a point after the last pixel of each
        # run of equal values. A subset keeps the points of the whole set; where its own counts do not
        # change they repeat, which changes no area.
        self.ends = np.flatnonzero(np.append(self.scores[1:] != self.scores[:-1], True))
        self._cache: dict[tuple[int, ...] | None, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}

    def _cumulative(self, images: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """At each threshold: (defective pixels, good pixels, summed region weights) at or above it, and
        the number of regions, counting only the pixels of ``images``."""
        key = None if images is None else tuple(sorted({int(i) for i in images}))
        if key is not None and len(key) == self.n_images:
            key = None
        if key not in self._cache:
            weight = self.region_weight
            if key is None:
                n_regions = int(self.regions_per_image.sum())
                selected: np.ndarray | bool = True
            else:
                member = np.zeros(self.n_images, dtype=bool)
                member[list(key)] = True
                selected = member[self.image]
                weight = np.where(selected, weight, np.float32(0))
                n_regions = int(self.regions_per_image[member].sum())
            positive = weight > 0
            good = (self.region_weight == 0) & selected
            count = np.int32 if len(self.scores) < 2**31 else np.int64
            self._cache = {key: (np.cumsum(positive, dtype=count)[self.ends],
                                 np.cumsum(good, dtype=count)[self.ends],
                                 np.cumsum(weight, dtype=np.float64)[self.ends], n_regions)}
        return self._cache[key]

    def auroc(self, images: Sequence[int] | None = None) -> float:
        """Pixel-level AUROC over the pixels of ``images`` (indices into the masks; all by default) -> [0, 1].

        Raises:
            ValueError: no defective or no good pixel among them.
        """
        tps, fps, _, _ = self._cumulative(images)
        n_pos, n_neg = int(tps[-1]), int(fps[-1])
        tps, fps = tps.astype(np.float64), fps.astype(np.float64)
        if n_pos == 0 or n_neg == 0:
            raise ValueError("pixel AUROC needs both defective and good pixels")
        tpr = np.concatenate(([0.0], tps / n_pos))
        fpr = np.concatenate(([0.0], fps / n_neg))
        return float(trapezoid(tpr, fpr))

    def pro_curve(self, images: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """PRO curve -> (false-positive rates, per-region overlaps), float64 (T + 1,), ascending, from (0, 0).

        At each of the T thresholds (every distinct map value, highest first) the FPR is the share of good
        pixels of ``images`` at or above it, and the PRO the mean, over all ground-truth regions of those
        images, of the share of each region's pixels at or above it (each region weighs the same).

        Raises:
            ValueError: no ground-truth region or no good pixel.
        """
        _, fps, weights, n_regions = self._cumulative(images)
        n_good = int(fps[-1])
        if n_regions == 0 or n_good == 0:
            raise ValueError("PRO needs at least one ground-truth region and one good pixel")
        return np.concatenate(([0.0], fps / float(n_good))), np.concatenate(([0.0], weights / n_regions))

    def au_pro(self, images: Sequence[int] | None = None, fpr_limit: float = 0.3) -> float:
        """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec's AU-PRO), in [0, 1].

        Raises:
            ValueError: no ground-truth region or no good pixel among ``images``.
        """
        fpr, pro = self.pro_curve(images)
        return integrate_to(fpr, pro, fpr_limit) / fpr_limit

    def f1_optimal_threshold(self, images: Sequence[int] | None = None) -> tuple[float, float]:
        """The map value maximising pixel-level F1 (defective = value >= threshold) -> (threshold, F1).

        Raises:
            ValueError: no defective pixel.
        """
        tps, fps, _, _ = self._cumulative(images)
        if tps[-1] == 0:
            raise ValueError("F1 needs defective pixels")
        f1 = 2.0 * tps / (tps.astype(np.float64) + fps + tps[-1])
        best = int(np.argmax(f1))
        return float(self.scores[self.ends[best]]), float(f1[best])


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """Pixel-level AUROC of bool masks against float maps of the same shapes (see :class:`PixelSet`).

    Raises:
        ValueError: counts or shapes differ, or no defective or no good pixel.
    """
    return PixelSet(masks, maps).auroc()


def au_pro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float = 0.3) -> float:
    """MVTec AU-PRO of bool masks against float maps of the same shapes (see :class:`PixelSet`).

    Raises:
        ValueError: counts or shapes differ, or no ground-truth region or no good pixel.
    """
    return PixelSet(masks, maps).au_pro(fpr_limit=fpr_limit)


def integrate_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under the curve (x ascending) from x[0] to ``x_max``.

    Like MVTec's reference ``trapezoid`` (``generic_util.py`` of the MVTec AD evaluation code): where
    ``x_max`` falls between two points, y is linearly interpolated there; where it equals a point, the
    first point at ``x_max`` closes the area (later points at ``x_max`` would add zero width). Beyond the
    last point the curve is taken as flat at its last y.
    """
    end = int(np.searchsorted(x, x_max, side="left"))  # first index with x >= x_max
    if end >= len(x):
        y_end = float(y[-1])
    elif x[end] == x_max or end == 0:
        y_end = float(y[end])
    else:
        y_end = float(y[end - 1] + (y[end] - y[end - 1]) * (x_max - x[end - 1]) / (x[end] - x[end - 1]))
    return float(trapezoid(np.append(y[:end], y_end), np.append(x[:end], x_max)))
