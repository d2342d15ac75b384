"""STPM's formulas (Wang et al. 2021, Eqs. 1-5) and the feature pyramids, on small tensors with known answers."""

import math

import pytest
import torch

from linewatch.detector.backbones import build_student
from linewatch.detector.stpm import (
    combine_maps,
    image_scores,
    normalize_features,
    pyramid_loss,
    smooth_map,
    stage_maps,
)


def _orthogonal_stages(batch: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Teacher features along channel 0, student along channel 1: unit vectors at distance sqrt(2) everywhere."""
    t, s = [], []
    for c, side in ((4, 8), (6, 4), (8, 2)):
        a = torch.zeros(batch, c, side, side)
        b = torch.zeros(batch, c, side, side)
        a[:, 0] = 3.0  # any positive length: Eq. 1 normalises it away
        b[:, 1] = 0.5
        t.append(a)
        s.append(b)
    return normalize_features(t), normalize_features(s)


def test_normalisation_gives_unit_vectors_per_position():
    f = normalize_features([torch.randn(2, 16, 5, 7)])[0]
    assert torch.allclose(f.norm(dim=1), torch.ones(2, 5, 7), atol=1e-6)


def test_loss_is_zero_for_identical_features_and_counts_images_and_stages():
    t, s = _orthogonal_stages(batch=3)
    assert pyramid_loss(t, t).item() == 0.0
    # 0.5 * ||t - s||^2 = 1 at every position -> mean 1 per stage and image; 3 stages x 3 images summed.
    assert pyramid_loss(t, s).item() == pytest.approx(9.0)


def test_stage_map_equals_one_minus_cosine_similarity():
    t = normalize_features([torch.randn(2, 8, 4, 4)])
    s = normalize_features([torch.randn(2, 8, 4, 4)])
    expected = 1 - torch.nn.functional.cosine_similarity(t[0], s[0], dim=1)
    assert torch.allclose(stage_maps(t, s)[0][:, 0], expected, atol=1e-6)


def test_anomaly_map_is_the_product_of_upsampled_stage_maps():
    maps = [torch.full((2, 1, 8, 8), 0.5), torch.full((2, 1, 4, 4), 0.4), torch.full((2, 1, 2, 2), 2.0)]
    out = combine_maps(maps, (32, 32))
    assert out.shape == (2, 1, 32, 32)
    assert torch.allclose(out, torch.full_like(out, 0.4))


def test_image_score_is_the_map_maximum():
    amap = torch.zeros(3, 1, 16, 16)
    amap[1, 0, 5, 7] = 0.75
    amap[2, 0, 0, 0] = 0.25
    assert image_scores(amap).tolist() == [0.0, 0.75, 0.25]


def test_smoothing_keeps_constant_maps_and_spreads_peaks():
    flat = torch.full((1, 1, 32, 32), 0.3)
    assert torch.allclose(smooth_map(flat, 4.0), flat, atol=1e-6)
    peak = torch.zeros(1, 1, 33, 33)
    peak[0, 0, 16, 16] = 1.0
    smoothed = smooth_map(peak, 2.0)
    assert smoothed.sum().item() == pytest.approx(1.0, abs=1e-3)
    assert smoothed[0, 0, 16, 16].item() == pytest.approx(1 / (2 * math.pi * 4), rel=0.05)
    assert smooth_map(peak, 0.0) is peak


@pytest.mark.parametrize("sigma", [1.0, 4.0, 8.0])
def test_smoothing_is_torchvisions_gaussian_blur(sigma):
    """Two 1D passes (separable) against torchvision's one 2D convolution, on an anomaly-map-like input."""
    from torchvision.transforms.v2.functional import gaussian_blur

    amap = torch.rand(3, 1, 96, 128, generator=torch.Generator().manual_seed(0)) ** 4 * 0.2
    size = 2 * math.ceil(3 * sigma) + 1
    reference = gaussian_blur(amap, [size, size], [sigma, sigma])
    ours = smooth_map(amap, sigma)
    assert ours.shape == amap.shape
    assert torch.allclose(ours, reference, rtol=1e-5, atol=1e-7)
    assert torch.equal(image_scores(ours).argsort(), image_scores(reference).argsort())


@pytest.mark.parametrize(("name", "channels"), [("efficientnet_lite0", (24, 40, 112)), ("resnet18", (64, 128, 256))])
def test_student_pyramid_has_three_stages_at_strides_4_8_16(name, channels):
    student = build_student(name)
    assert student.channels == channels
    out = student(torch.randn(2, 3, 128, 96))
    expected = [(2, c, 128 // s, 96 // s) for c, s in zip(channels, (4, 8, 16), strict=True)]
    assert [tuple(f.shape) for f in out] == expected
