"""Metrics checked against hand computations and against scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from linewatch.detector.calibration import f1_optimal_threshold, threshold_at_rate
from linewatch.detector.metrics import PixelSet, au_pro, image_auroc, integrate_to, pixel_auroc


def test_au_pro_small_case_by_hand():
    # Image 1: region A = 2 pixels (0.9, 0.1), good pixels 0.5 and 0.2.
    # Image 2: region B = 1 pixel (0.7), good pixels 0.3 and 0.05. 4 good pixels, 2 regions.
    masks = [np.array([[1, 1, 0, 0]], bool), np.array([[1, 0, 0]], bool)]
    maps = [np.array([[0.9, 0.1, 0.5, 0.2]]), np.array([[0.7, 0.3, 0.05]])]
    # Thresholds high to low:     0.9       0.7      0.5      0.3      0.2      0.1      0.05
    # FPR (of 4 good pixels):     0        0        1/4      2/4      3/4      3/4      1
    # PRO (mean over A and B):    1/4      3/4      3/4      3/4      3/4      1        1
    fpr, pro = PixelSet(masks, maps).pro_curve()
    assert fpr.tolist() == pytest.approx([0, 0, 0, 0.25, 0.5, 0.75, 0.75, 1])
    assert pro.tolist() == pytest.approx([0, 0.25, 0.75, 0.75, 0.75, 0.75, 1, 1])
    # Area up to FPR 0.3: 0.75 from 0 to 0.3 (flat after reaching 0.75 at FPR 0) = 0.225; / 0.3 = 0.75.
    assert au_pro(masks, maps) == pytest.approx(0.75)
    # Up to FPR 0.8: 0.75 * 0.75 + (0.8 - 0.75) * 1 = 0.6125; / 0.8
    assert au_pro(masks, maps, fpr_limit=0.8) == pytest.approx(0.6125 / 0.8)


def test_au_pro_counts_8_connected_regions_and_weights_them_equally():
    mask = np.zeros((5, 5), bool)
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours: one 8-connected region of 2 pixels
    mask[4, 4] = True  # a second region of 1 pixel
    amap = np.zeros((5, 5))
    amap[0, 0] = amap[1, 1] = 0.2  # found at 0.2
    amap[4, 4] = 0.9  # found first
    fpr, pro = PixelSet([mask], [amap]).pro_curve()
    assert pro.tolist() == pytest.approx([0, 0.5, 1.0, 1.0])  # each region counts 1/2 whatever its size
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1.0])


def test_integrate_to_interpolates_the_end_point():
    x, y = np.array([0.0, 0.2, 0.4]), np.array([0.0, 1.0, 1.0])
    assert integrate_to(x, y, 0.3) == pytest.approx(0.1 + 0.1)
    assert integrate_to(x, y, 0.2) == pytest.approx(0.1)


def test_pixel_auroc_equals_scikit_learn_with_ties_and_subsets():
    rng = np.random.default_rng(3)
    masks = [rng.random((30, 40)) < 0.1 for _ in range(6)]
    maps = [np.round(rng.random((30, 40)) + 0.4 * m, 2) for m in masks]  # rounding makes many ties
    flat = lambda items: np.concatenate([a.ravel() for a in items])  # noqa: E731
    assert pixel_auroc(masks, maps) == pytest.approx(roc_auc_score(flat(masks), flat(maps)), abs=1e-12)
    subset = [1, 4]
    expected = roc_auc_score(flat([masks[i] for i in subset]), flat([maps[i] for i in subset]))
    assert PixelSet(masks, maps).auroc(subset) == pytest.approx(expected, abs=1e-12)


def test_image_auroc_and_shape_checks():
    assert image_auroc([False, False, True, True], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="differs"):
        PixelSet([np.zeros((2, 2), bool)], [np.zeros((2, 3))])


def test_thresholds_from_good_samples_and_f1():
    good = np.arange(1, 101, dtype=float)  # 1 .. 100
    t = threshold_at_rate(good, 0.05)
    assert t == pytest.approx(95.05)
    assert np.mean(good > t) == pytest.approx(0.05)
    labels = [0, 0, 0, 1, 1, 1]
    scores = [0.1, 0.2, 0.6, 0.5, 0.7, 0.9]
    threshold, f1 = f1_optimal_threshold(labels, scores)
    assert (threshold, f1) == (pytest.approx(0.5), pytest.approx(6 / 7))
    with pytest.raises(ValueError):
        threshold_at_rate([], 0.1)
