"""Decision thresholds, set from good images only (and reported F1-optimal where defects are labelled).

The image threshold rule (:func:`calibrate_image_threshold`), over the image scores of the n held-out good
images (never trained on) and the false-reject target r:

    threshold = max(highest held-out good score, mean + k * std)

where ``mean + k * std`` is the one-sided normal tolerance bound that, with 95% confidence, at least
(1 - r) of good parts score below (k from the noncentral t distribution, NIST/SEMATECH e-Handbook of
Statistical Methods 7.2.6.3; std with n - 1). So no held-out good image is ever above the threshold, and
the threshold extrapolates past the highest one when few images stand behind a small target.

The evidence is recorded with it: n, r, the held-out false rejects (0 by the rule) and the false-reject
rate's Clopper-Pearson 95% interval. n held-out images cannot show a rate below 1/n, so a model whose
n x r < 1, or whose n is below a set minimum, is *under-calibrated* (training refuses to publish it
unless forced).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest, nct, norm
from sklearn.metrics import precision_recall_curve

CONFIDENCE = 0.95
RULE = ("max(highest held-out good score, one-sided 95%-confidence normal tolerance bound covering "
        "1 - target of good scores)")


@dataclass(frozen=True)
class ImageCalibration:
    """An image threshold and the evidence behind it (see the module docstring).

    ``false_reject_rate_ci``: Clopper-Pearson interval (``CONFIDENCE``) of the false-reject rate, from
    ``false_rejects`` of ``held_out_goods``; ``needed_held_out_goods``: what the target asks for
    (:func:`held_out_goods_needed`); ``status``: ``calibrated`` or ``under-calibrated``.
    """

    threshold: float
    rule: str
    held_out_goods: int
    target_false_reject_rate: float
    false_rejects: int
    false_reject_rate_ci: tuple[float, float]
    needed_held_out_goods: int
    status: str

    def as_dict(self) -> dict:
        return {**asdict(self), "false_reject_rate_ci": list(self.false_reject_rate_ci)}


def held_out_goods_needed(target_rate: float, minimum: int) -> int:
    """Held-out good images a false-reject target needs: ``max(ceil(1 / target_rate), minimum)``."""
    return max(math.ceil(1.0 / target_rate - 1e-9), int(minimum))


def tolerance_factor(n: int, coverage: float, confidence: float = CONFIDENCE) -> float:
    """One-sided normal tolerance factor k for n samples (``mean + k * std`` covers ``coverage`` of the
    population with ``confidence``): ``nct.ppf(confidence, n - 1, z_coverage * sqrt(n)) / sqrt(n)``.

    Raises:
        ValueError: n < 2.
    """
    if n < 2:
        raise ValueError(f"a tolerance bound needs at least 2 samples, got {n}")
    return float(nct.ppf(confidence, n - 1, norm.ppf(coverage) * math.sqrt(n)) / math.sqrt(n))


def calibrate_image_threshold(good_scores: np.ndarray, target_rate: float, minimum: int) -> ImageCalibration:
    """The image threshold of held-out good image scores (any shape, their unit) by the module's rule.

    With one score the tolerance bound is undefined and the threshold is that score (under-calibrated).

    Raises:
        ValueError: no scores, or ``target_rate`` outside (0, 1).
    """
    s = _good_samples(good_scores, target_rate)
    threshold = float(s.max())
    if s.size >= 2:
        threshold = max(threshold, float(s.mean() + tolerance_factor(s.size, 1 - target_rate) * s.std(ddof=1)))
    rejects = int((s > threshold).sum())
    ci = binomtest(rejects, int(s.size)).proportion_ci(confidence_level=CONFIDENCE, method="exact")
    needed = held_out_goods_needed(target_rate, minimum)
    return ImageCalibration(threshold, RULE, int(s.size), float(target_rate), rejects, (float(ci.low), float(ci.high)),
                            needed, "calibrated" if s.size >= needed else "under-calibrated")


def calibrate_thresholds(good_scores: np.ndarray, good_maps: list[np.ndarray], target_rate: float,
                         pixel_rate: float, minimum: int, global_scores: np.ndarray | None = None) -> dict:
    """The ``thresholds`` record of model.json from the held-out goods' STPM image scores (n,) and anomaly maps (any
    shapes), in their unit: ``image`` by :func:`calibrate_image_threshold` (its evidence under ``calibration``,
    ``status``), ``pixel`` by :func:`threshold_at_rate` of all their map pixels at ``pixel_rate``, the two targets
    and ``calibrated_on``. With the goods' global-branch distances (n,) (:mod:`.global_branch`), ``global`` too, by
    the image rule at the same target (its evidence under ``global_calibration``; ``status`` is the worse of the
    two). Training, ``linewatch fit-global`` and the reduced-precision exports (:mod:`.runtimes.reduced_precision`)
    all call this, so a threshold is set by one rule whatever precision scored the goods.

    Raises:
        ValueError: no scores or map pixels, or a rate outside (0, 1).
    """
    calibration = calibrate_image_threshold(good_scores, target_rate, minimum)
    n = int(np.asarray(good_scores).size)
    branch = None if global_scores is None else calibrate_image_threshold(global_scores, target_rate, minimum)
    status = calibration.status if branch is None or branch.status == "calibrated" else branch.status
    return {
        "image": calibration.threshold,
        "pixel": threshold_at_rate(np.concatenate([np.asarray(m).ravel() for m in good_maps]), pixel_rate),
        "target_false_reject_rate": target_rate,
        "pixel_false_positive_rate": pixel_rate,
        "calibrated_on": f"{n} held-out good image{'s' if n != 1 else ''}",
        "status": status,
        "calibration": calibration.as_dict(),
        **({} if branch is None else {"global": branch.threshold, "global_calibration": branch.as_dict()}),
    }


def threshold_at_rate(good_values: np.ndarray, rate: float) -> float:
    """The value that about a share ``rate`` of good samples exceeds: their (1 - rate) quantile.

    ``numpy.quantile`` with linear interpolation, over all values of ``good_values`` (any shape) as
    float64; returned in their unit.

    Used with image scores of held-out good images (``rate`` = target false-reject rate) and with
    their anomaly-map pixels (``rate`` = pixel false-positive rate). A sample is judged defective
    when its value is strictly greater than the threshold.

    Raises:
        ValueError: no values, or ``rate`` outside (0, 1).
    """
    values = _good_samples(good_values, rate)
    return float(np.quantile(values, 1.0 - rate))


def f1_optimal_threshold(is_defect: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """The threshold maximising F1 on N labelled samples (bool, True = defective; N scores) -> (threshold, F1).

    Defective is ``score >= threshold`` (scikit-learn's ``precision_recall_curve`` convention).

    Raises:
        ValueError: the labels do not contain both classes.
    """
    labels = np.asarray(is_defect, dtype=bool).ravel()
    if labels.all() or not labels.any():
        raise ValueError("F1-optimal threshold needs both good and defective samples")
    precision, recall, thresholds = precision_recall_curve(labels, np.asarray(scores).ravel())
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    best = int(np.argmax(f1[:-1]))  # the last PR point has no threshold
    return float(thresholds[best]), float(f1[best])


def score_statistics(scores: np.ndarray) -> dict[str, float]:
    """Summary of image scores (any shape): count, mean, std (population), min, p50, p95, p99, max.

    Raises:
        ValueError: no scores (numpy's, from ``min``).
    """
    s = np.asarray(scores, dtype=np.float64)
    return {
        "count": int(s.size),
        "mean": float(s.mean()),
        "std": float(s.std()),
        "min": float(s.min()),
        "p50": float(np.quantile(s, 0.5)),
        "p95": float(np.quantile(s, 0.95)),
        "p99": float(np.quantile(s, 0.99)),
        "max": float(s.max()),
    }


def _good_samples(values: np.ndarray, rate: float) -> np.ndarray:
    """``values`` flattened to float64, checked with ``rate``.

    Raises:
        ValueError: no values, or ``rate`` outside (0, 1).
    """
    out = np.asarray(values, dtype=np.float64).ravel()
    if out.size == 0:
        raise ValueError("no good samples to calibrate a threshold on")
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
    return out
