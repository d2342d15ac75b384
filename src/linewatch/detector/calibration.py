"""Decision thresholds, set from good images only (and reported F1-optimal where defects are labelled)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve


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
    values = np.asarray(good_values, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no good samples to calibrate a threshold on")
    if not 0 < rate < 1:
        raise ValueError(f"rate must be in (0, 1), got {rate}")
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
