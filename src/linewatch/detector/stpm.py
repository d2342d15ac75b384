"""Student-Teacher Feature Pyramid Matching (Wang, Han, Ding, Huang, BMVC 2021, arXiv 2103.04257).

A frozen ImageNet teacher and a student of the same architecture each produce a feature pyramid
(strides 4, 8, 16). The student learns, from defect-free images only, to reproduce the teacher's
channel-L2-normalised features; where it fails, the part differs from what it saw in training.

Formulas (paper Sec. 3):

* Eq. 1 normalisation: ``f_hat = f / ||f||_2`` over channels, per position.
* Eq. 2 per-stage loss of an image: ``l = 1 / (2 h w) * sum_ij ||t_hat_ij - s_hat_ij||^2``.
* Eq. 3 total loss of an image: the sum over stages (all weights 1).
* Batches: the images' losses are summed, as anomalib does (``STFPMLoss``: ``MSELoss(reduction="sum")``
  times ``0.5 / (h w)``) and, as there, trained with the paper's SGD learning rate of 0.4; the figures
  in bench/README.md were measured so. The authors' released code (github.com/gdwang08/STFPM,
  ``main.py``) instead averages over the batch and the positions and leaves out the 1/2: for the same
  features our loss and its gradient are B / 2 times theirs (16 times for a batch of 32) at that rate.
* Eq. 4 stage anomaly map: ``0.5 * ||t_hat - s_hat||^2`` per position (= 1 - cosine similarity), in [0, 2].
* Eq. 5 anomaly map: stage maps bilinearly upsampled to the input size and multiplied, in [0, 8].
* Then, in neither the paper nor the authors' code: Gaussian smoothing of the map with a sigma of
  ``smoothing_sigma`` model pixels (``training.map_smoothing_sigma``, 4 by default; 0 turns it off).
* Sec. 3.3 image score: the maximum of the smoothed anomaly map.
* With a global branch (:mod:`.global_branch`; models with ``global`` in model.json), the raw teacher stages of
  the same pass also give a Mahalanobis distance per input, and the image score is fused with it there; the map is
  unchanged.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BackboneSpec, FeaturePyramid


def normalize_features(features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Eq. 1: each (B, C, h, w) stage L2-normalised over C (``F.normalize``, eps 1e-12), float32 out."""
    return [F.normalize(f.float(), p=2, dim=1) for f in features]


def pyramid_loss(teacher_hat: Sequence[torch.Tensor], student_hat: Sequence[torch.Tensor]) -> torch.Tensor:
    """Eqs. 2-3: sum over stages and over the batch of the per-image mean of 0.5 * ||t_hat - s_hat||^2.

    Summed, not averaged, over the B images (see the module docstring).

    Args:
        teacher_hat, student_hat: normalised stages, float (B, C_i, h_i, w_i), stage by stage the same shapes.
    Returns:
        scalar float32 loss, in [0, 2 * B * number of stages].
    """
    loss = torch.zeros((), device=teacher_hat[0].device)
    for t, s in zip(teacher_hat, student_hat, strict=True):
        h, w = t.shape[-2:]
        loss = loss + 0.5 * ((t - s) ** 2).sum() / (h * w)
    return loss


def stage_maps(teacher_hat: Sequence[torch.Tensor], student_hat: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Eq. 4: per stage 0.5 * ||t_hat - s_hat||^2 over channels, float (B, 1, h_i, w_i), values in [0, 2]."""
    return [0.5 * ((t - s) ** 2).sum(dim=1, keepdim=True) for t, s in zip(teacher_hat, student_hat, strict=True)]


def combine_maps(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Eq. 5: stage maps bilinearly upsampled to ``size`` (H, W) and multiplied -> float (B, 1, H, W)."""
    out = F.interpolate(maps[0], size=size, mode="bilinear", align_corners=False)
    for m in maps[1:]:
        out = out * F.interpolate(m, size=size, mode="bilinear", align_corners=False)
    return out


@functools.lru_cache(maxsize=8)
def gaussian_kernel(sigma: float) -> torch.Tensor:
    """The float32 (k,) CPU kernel of :func:`smooth_map`, ``k = 2 * ceil(3 * sigma) + 1``: torchvision's
    ``gaussian_blur`` kernel along one axis (``exp(-x^2 / (2 sigma^2))`` on ``k`` points, normalised to sum 1),
    computed the same way so the values are bit for bit its own; its 2D kernel is this one's outer product.

    Made once per sigma and outside any trace, so an exported graph (:mod:`.runtimes.onnx_export`) holds it as a
    constant; a caller must not modify it in place.
    """
    size = 2 * math.ceil(3 * sigma) + 1
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size, dtype=torch.float32)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    return pdf / pdf.sum()


def smooth_map(anomaly_map: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian smoothing of float (B, 1, H, W) maps with ``sigma`` in map pixels -> the same shape.

    Not part of STPM (see the module docstring). The kernel (:func:`gaussian_kernel`) is ``2 * ceil(3 * sigma) + 1``
    pixels wide, edges are reflected: torchvision's ``gaussian_blur``, written out with a constant kernel
    because its kernel, computed inside the call, cannot be exported to ONNX. The Gaussian is separable, so it runs
    as a pass along the rows then one along the columns: the same result as torchvision's single 2D convolution up
    to float32 rounding, with 2k multiply-adds a pixel instead of k^2 (at sigma 4, 50 against 625: a 256x256 map took
    3 ms instead of 20 ms on one CPU thread). ``sigma <= 0`` returns the map unchanged.
    """
    if sigma <= 0:
        return anomaly_map
    kernel = gaussian_kernel(float(sigma)).to(anomaly_map.device, anomaly_map.dtype)
    size = kernel.shape[0]
    pad = size // 2
    padded = F.pad(anomaly_map, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(F.conv2d(padded, kernel.view(1, 1, 1, size)), kernel.view(1, 1, size, 1))


def image_scores(anomaly_map: torch.Tensor) -> torch.Tensor:
    """Sec. 3.3: the image score is the maximum of the anomaly map (the smoothed one, in :meth:`STPM.forward`);
    float (B, 1, H, W) -> (B,)."""
    return anomaly_map.flatten(1).amax(dim=1)


class STPM(nn.Module):
    """Teacher and student pyramids plus the input normalisation of the teacher.

    Inputs everywhere are RGB model input windows as uint8 (B, 3, S, S), S the model's ``image_size``,
    prepared under the model's input geometry (:func:`linewatch.detector.geometry.model_inputs`).

    Args:
        spec: the backbone's build recipe and input mean/std.
        teacher: the ImageNet pyramid; frozen here and kept in eval mode.
        student: a pyramid of the same stage channels.
        smoothing_sigma: Gaussian sigma in model pixels applied to every anomaly map (0 = none).
        global_branch: the model's :class:`.global_branch.GlobalGaussian`, or None (STPM alone).
    Raises:
        ValueError: teacher and student stages differ in channels.
    """

    def __init__(self, spec: BackboneSpec, teacher: FeaturePyramid, student: FeaturePyramid, smoothing_sigma: float,
                 global_branch: nn.Module | None = None):
        super().__init__()
        if teacher.channels != student.channels:
            raise ValueError(f"teacher stages {teacher.channels} differ from student stages {student.channels}")
        self.spec = spec
        self.teacher = teacher.eval().requires_grad_(False)
        self.student = student
        self.smoothing_sigma = smoothing_sigma
        self.global_branch = global_branch
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1) * 255.0, persistent=False)

    def train(self, mode: bool = True) -> STPM:
        super().train(mode)
        self.teacher.eval()  # the teacher's batch norm statistics stay ImageNet's
        return self

    def normalize_input(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) RGB -> float32 (B, 3, H, W), ``(x / 255 - mean) / std`` as the teacher was trained."""
        return (images.float() - self.mean) / self.std

    @torch.no_grad()
    def teacher_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised teacher stages (Eq. 1) of uint8 (B, 3, H, W) images."""
        return normalize_features(self.teacher(self.normalize_input(images)))

    def student_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised student stages (Eq. 1) of uint8 (B, 3, H, W) images."""
        return normalize_features(self.student(self.normalize_input(images)))

    def anomaly_map_from(self, teacher_hat: Sequence[torch.Tensor], student_hat: Sequence[torch.Tensor],
                         size: tuple[int, int]) -> torch.Tensor:
        """Anomaly map float (B, 1, H, W) at ``size`` (H, W) from normalised stages (Eqs. 4-5, then smoothing)."""
        return smooth_map(combine_maps(stage_maps(teacher_hat, student_hat), size), self.smoothing_sigma)

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Score uint8 (B, 3, H, W) images -> (image scores float (B,), anomaly maps float (B, 1, H, W)), and with a
        global branch a third output, its Mahalanobis distances float32 (B,).

        The map is Eq. 5's product at the input size, smoothed; the score is its maximum (Sec. 3.3), fused with the
        global branch's distance where there is one (:meth:`.global_branch.GlobalGaussian.fused`).
        """
        x = self.normalize_input(images)
        t_raw = self.teacher(x)
        t_hat = normalize_features(t_raw)
        s_hat = normalize_features(self.student(x))
        amap = self.anomaly_map_from(t_hat, s_hat, tuple(images.shape[-2:]))
        if self.global_branch is None:
            return image_scores(amap), amap
        distances = self.global_branch(t_raw)
        return self.global_branch.fused(image_scores(amap), distances), amap, distances
