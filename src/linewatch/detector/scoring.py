"""The scoring API the workers, evaluation and the trainer use: load a model once, score batches.

Fast path: inference mode, the channels_last memory layout (a third less time per batch on the CPU
too: 0.94 s against 1.43 s side by side, bench/README.md), and mixed precision on CUDA.

Reduced precision and verdicts: thresholds are calibrated on float32 scores (:mod:`.training`). A scorer
running at bfloat16 or float16 re-scores in float32 every image whose score is within the model's guard band
of the image threshold (``|score / threshold - 1| <= precision.guard_band`` in model.json), so reduced
precision never decides a verdict near the threshold; far from it, its score shift cannot flip one.

Frames: :meth:`Scorer.prepare` turns a frame into its model inputs under the model's input geometry
(:mod:`.geometry`, model.json ``input``) and :meth:`Scorer.score_frames` scores frames: their windows' maps
stitched into one map per frame at model scale (``plan.scaled``, the frame's aspect ratio), whose maximum is the
image score (fused with the global branch's score where the model has one, :mod:`.global_branch`).
:func:`frame_scores` is that computation for the training's calibration too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch

from linewatch.contracts.messages import DefectRegion

from .devices import autocast, precision_of, resolve_device, to_model_layout
from .geometry import FrameInput, InputGeometry, model_inputs, stitch_batch
from .global_branch import GlobalBranchError, fusion_scale
from .imaging import resize_map
from .model_files import LoadedModel, ModelFileError, load_model
from .runtimes.selection import runtime_thresholds, select_forward
from .runtimes.threads import intra_op_threads
from .stpm import STPM

MAX_REGIONS = 32
# Relative. bfloat16 keeps 8 significant bits (unit roundoff 2^-8, 0.4%) and errors add up through the network:
# 2.7% measured with CPU autocast on held-out goods (tests/test_calibration.py). Training widens it on a GPU.
DEFAULT_GUARD_BAND = 0.1
# Windows per forward pass when frames are scored (a batch of tiled frames can hold hundreds of windows).
WINDOWS_PER_PASS = 64


@dataclass
class BatchScores:
    """Scores of a batch of B images at model resolution S.

    ``image_scores`` float32 (B,): the maximum of the smoothed anomaly map. ``normalized`` float32 (B,):
    image score divided by the image threshold, so 1.0 is the decision boundary. ``is_defect`` bool (B,):
    score strictly above the threshold. ``anomaly_maps`` float32 (B, 1, S, S): Eq. 5's product of
    stage maps, Gaussian-smoothed (:mod:`.stpm`). With a global branch (:mod:`.global_branch`) the image scores
    are each window's fused score and ``global_scores`` float32 (B,) its Mahalanobis distances; else None.
    """

    image_scores: np.ndarray
    normalized: np.ndarray
    is_defect: np.ndarray
    anomaly_maps: np.ndarray
    global_scores: np.ndarray | None = None


@dataclass
class FrameScores:
    """Scores of B frames. ``image_scores`` float32 (B,): the maximum of each frame's map; ``normalized`` float32
    (B,): divided by the image threshold; ``is_defect`` bool (B,): strictly above it; ``maps``: per frame, float32
    anomaly map at model scale, shape ``plan.scaled`` (rows, columns: the frame's aspect ratio; (S, S) for a
    ``resize`` model); :meth:`Scorer.full_resolution_map` brings one to the frame's own size. With a global branch
    (:mod:`.global_branch`) the image scores are fused and ``local_scores`` (STPM's, float32 (B,)) and
    ``global_scores`` (Mahalanobis distances, float32 (B,)) say what they were fused from; else both None."""

    image_scores: np.ndarray
    normalized: np.ndarray
    is_defect: np.ndarray
    maps: list[np.ndarray]
    local_scores: np.ndarray | None = None
    global_scores: np.ndarray | None = None


@torch.inference_mode()
def forward_scores(stpm: STPM, batch: torch.Tensor, device: torch.device,
                   precision: str = "auto") -> tuple[np.ndarray, ...]:
    """The one scoring computation of serving and calibration: uint8 (B, 3, S, S) model inputs ->
    (image scores float32 (B,), smoothed anomaly maps float32 (B, 1, S, S)), and with a global branch its
    Mahalanobis distances float32 (B,) third (the image scores are then fused, :mod:`.global_branch`).

    :class:`Scorer` and the training's threshold calibration (:func:`.training.calibration_scores`) both
    call this, so a threshold is set on exactly the scores the workers and ``linewatch score`` compute
    (the student's and teacher's features recomputed from the pixels, never a cached copy), at ``precision``
    (:func:`.devices.precision_of`).
    """
    x = to_model_layout(batch, device)
    with autocast(device, precision):
        out = stpm(x)
    return tuple(o.float().cpu().numpy() for o in out)


class FrameOutputs(NamedTuple):
    """:func:`frame_scores` of B frames. ``scores`` float32 (B,): the image scores (fused with the global branch
    where the model has one, else ``local_scores``); ``maps``: float32 per frame, ``plan.scaled``; ``local_scores``
    float32 (B,): STPM's, the maximum of each map; ``global_scores``: float32 (B,) Mahalanobis distances, the
    largest of each frame's windows, or None without a global branch."""

    scores: np.ndarray
    maps: list[np.ndarray]
    local_scores: np.ndarray
    global_scores: np.ndarray | None


def frame_scores(stpm: STPM, frames: Sequence[FrameInput], device: torch.device, precision: str = "float32",
                 per_pass: int = WINDOWS_PER_PASS,
                 forward: Callable[[torch.Tensor], tuple[np.ndarray, ...]] | None = None,
                 ) -> FrameOutputs:
    """Frames' model inputs (:func:`.geometry.model_inputs`) -> :class:`FrameOutputs`: :func:`forward_scores` on
    their windows (or ``forward``, an export runtime's equivalent, :mod:`.runtimes`), ``per_pass`` at a time, then
    :func:`.geometry.stitch` per frame and the maximum of each map; with a global branch (``stpm.global_branch``)
    the largest window distance of each frame, fused with it (:meth:`.global_branch.GlobalGaussian.fused`). Serving
    (:meth:`Scorer.score_frames`) and the training's threshold calibration both call this."""
    if not frames:
        empty = np.zeros(0, dtype=np.float32)
        return FrameOutputs(empty, [], empty, None if stpm.global_branch is None else empty)
    if all(isinstance(f.tiles, np.ndarray) for f in frames):
        tiles = torch.from_numpy(np.concatenate([f.tiles for f in frames]))
    else:  # decoded on the device
        tiles = torch.cat([torch.as_tensor(f.tiles).to(device) for f in frames])
    if forward is None:
        def forward(windows: torch.Tensor) -> tuple[np.ndarray, ...]:
            return forward_scores(stpm, windows, device, precision)
    outs = [forward(tiles[i : i + per_pass]) for i in range(0, len(tiles), per_pass)]
    stitched = stitch_batch(np.concatenate([o[1] for o in outs]), [f.plan for f in frames])
    local = np.array([m.max() for m in stitched], dtype=np.float32)
    if stpm.global_branch is None:
        return FrameOutputs(local, stitched, local, None)
    distances = np.concatenate([o[2] for o in outs])
    starts = np.cumsum([0] + [len(f.plan.windows) for f in frames[:-1]])
    distances = np.maximum.reduceat(distances, starts).astype(np.float32)
    fused = stpm.global_branch.fused(torch.from_numpy(local), torch.from_numpy(distances)).numpy()
    return FrameOutputs(fused, stitched, local, distances)


class Scorer:
    """A loaded STPM model on a device, with its thresholds.

    Args:
        model_dir: a model directory (:mod:`.model_files`).
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        teacher_weights: the teacher weights file; by default the backbone's default location.
        precision: ``auto`` (bfloat16/float16 on CUDA, float32 on the CPU) or one of them; see the module
            docstring for verdicts near the threshold.
        runtime: ``torch`` (eager PyTorch), ``onnxruntime`` or ``openvino`` (the model's ONNX export or OpenVINO IR)
            or ``auto`` (the fastest of them that matches eager PyTorch on the model's held-out goods), or the opt-in
            reduced-precision ``openvino-bf16`` / ``openvino-int8``, which score with their own recalibrated
            thresholds: :mod:`.runtimes.selection`; :attr:`runtime` says which scores.
        threads: intra-op threads of an export runtime; default :func:`.runtimes.threads.intra_op_threads`
            (torch's are set per process, see there).
    Raises (constructor): ModelFileError (also: an export runtime without a valid export), WeightsNotFoundError,
        RuntimeError (CUDA asked, none present), ValueError (unknown precision or runtime; an export runtime on a
        GPU or at reduced precision), ImportError (an export runtime asked, not installed).
    """

    def __init__(self, model_dir: Path, device: str = "auto", teacher_weights: Path | None = None,
                 precision: str = "auto", runtime: str = "torch", threads: int | None = None):
        self.device = resolve_device(device)
        self.precision = precision_of(self.device, precision)
        self.model: LoadedModel = load_model(model_dir, self.device, teacher_weights)
        self.model.stpm.to(memory_format=torch.channels_last)
        self.guard_band = float(self.model.metadata.get("precision", {}).get("guard_band", DEFAULT_GUARD_BAND))
        self.geometry = InputGeometry.from_metadata(self.model.metadata)
        self.runtime, self._forward = select_forward(
            runtime, model=self.model, device=self.device, precision=self.precision, torch_forward=self.torch_forward,
            prepare=self.windows, threads=threads or intra_op_threads())
        # a reduced-precision export scores with the thresholds recalibrated on it, every other runtime with the
        # model's own (float32) thresholds
        thresholds = runtime_thresholds(self.model.metadata, self.runtime)
        self.image_threshold = float(thresholds["image"])
        self.pixel_threshold = float(thresholds["pixel"])
        if self.model.stpm.global_branch is not None:  # fused by the same thresholds it is compared with
            try:
                self.model.stpm.global_branch.scale = fusion_scale(thresholds, f"{model_dir} {self.runtime}")
            except GlobalBranchError as exc:
                raise ModelFileError(str(exc)) from None

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def image_size(self) -> int:
        return self.model.image_size

    def prepare(self, rgb: np.ndarray, source: str = "<image>") -> FrameInput:
        """uint8 (H, W, 3) RGB frame -> its model inputs under the model's input geometry (:mod:`.geometry`).

        Raises:
            ImageError: ``too_many_tiles`` (see :meth:`.geometry.InputGeometry.plan`).
        """
        return model_inputs(rgb, self.geometry, source)

    def windows(self, rgb: np.ndarray) -> np.ndarray:
        """uint8 (H, W, 3) RGB frame -> its uint8 (n, 3, S, S) model input windows (:meth:`prepare`'s ``tiles``):
        what an export runtime's parity check (:mod:`.runtimes.parity`) feeds both runtimes."""
        return np.asarray(self.prepare(rgb).tiles)

    def warm_up(self, max_windows: int) -> float:
        """Prepare the runtime for batches of up to ``max_windows`` model-input windows (at most
        ``WINDOWS_PER_PASS``, the most one runtime call is given), where it pays for a new batch size on its first
        call (OpenVINO: :meth:`.runtimes.openvino_runtime.OpenVinoForward.warm_up`); returns the seconds it took,
        0.0 for a runtime that needs none. Raises: as the runtime's forward."""
        warm = getattr(self._forward, "warm_up", None)
        if warm is None:
            return 0.0
        started = time.perf_counter()
        warm(min(max_windows, WINDOWS_PER_PASS), self.image_size)
        return time.perf_counter() - started

    def score_frames(self, frames: Sequence[FrameInput]) -> FrameScores:
        """Score frames prepared by :meth:`prepare` (or the workers' decoders, under this model's geometry).
        Frames within the guard band of the threshold are re-scored in float32 (module docstring).

        Raises:
            ValueError: a frame prepared under another geometry.
        """
        for f in frames:
            if f.plan.geometry != self.geometry:
                raise ValueError(f"frame prepared for {f.plan.geometry}, this model takes {self.geometry}")
        out = frame_scores(self.model.stpm, frames, self.device, self.precision, forward=self._forward)
        scores, maps, local, distances = out
        if self.precision != "float32":
            for i in np.flatnonzero(np.abs(scores / self.image_threshold - 1) <= self.guard_band):
                exact = frame_scores(self.model.stpm, [frames[i]], self.device, "float32")
                scores[i], maps[i], local[i] = exact.scores[0], exact.maps[0], exact.local_scores[0]
                if distances is not None:
                    distances[i] = exact.global_scores[0]
        return FrameScores(scores, (scores / self.image_threshold).astype(np.float32), scores > self.image_threshold,
                           maps, None if distances is None else local, distances)

    def score_images(self, images: Sequence[np.ndarray]) -> FrameScores:
        """:meth:`score_frames` of uint8 (H, W, 3) RGB images (any sizes). Raises: see :meth:`prepare`."""
        return self.score_frames([self.prepare(rgb) for rgb in images])

    def torch_forward(self, batch: torch.Tensor | np.ndarray) -> tuple[np.ndarray, ...]:
        """Eager PyTorch's :func:`forward_scores` of uint8 (B, 3, S, S) inputs at this scorer's precision (the
        reference every other runtime is checked against): scores, maps and, with a global branch, distances."""
        return forward_scores(self.model.stpm, torch.as_tensor(batch), self.device, self.precision)

    @torch.inference_mode()
    def score(self, batch: torch.Tensor | np.ndarray) -> BatchScores:
        """Score uint8 (B, 3, S, S) RGB model inputs, window by window (frames: :meth:`score_frames`).

        Raises:
            ValueError: wrong dtype or shape.
        """
        x = torch.as_tensor(batch)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (self.image_size,) * 2:
            raise ValueError(
                f"expected uint8 (B, 3, {self.image_size}, {self.image_size}), got {x.dtype} {tuple(x.shape)}"
            )
        out = [np.array(o) for o in self._forward(x)]
        if self.precision != "float32":
            near = np.flatnonzero(np.abs(out[0] / self.image_threshold - 1) <= self.guard_band)
            if near.size:
                exact = forward_scores(self.model.stpm, x[torch.as_tensor(near, device=x.device)], self.device,
                                       "float32")
                for o, e in zip(out, exact, strict=True):
                    o[near] = e
        if len(out) > 2:  # fused here: a reduced-precision graph holds model.json's scale, not its own thresholds'
            out[0] = self.model.stpm.global_branch.fused(torch.from_numpy(out[1].max(axis=(1, 2, 3))),
                                                         torch.from_numpy(out[2])).numpy()
        scores = out[0]
        return BatchScores(
            image_scores=scores,
            normalized=(scores / self.image_threshold).astype(np.float32),
            is_defect=scores > self.image_threshold,
            anomaly_maps=out[1],
            global_scores=out[2] if len(out) > 2 else None,
        )

    def regions(self, anomaly_map: np.ndarray, original_shape: tuple[int, int]) -> list[DefectRegion]:
        """Defect regions of one frame's map at model scale (h, w) ((1, h, w) too), boxes scaled to
        ``original_shape`` (H, W) by H / h and W / w.

        8-connected components of the pixels strictly above the pixel threshold, largest (scaled area)
        first, at most 32; each with its box and area in original pixels and its peak map value.
        """
        amap = np.asarray(anomaly_map, dtype=np.float32)
        amap = amap.reshape(amap.shape[-2:])
        mask = (amap > self.pixel_threshold).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        sy, sx = original_shape[0] / amap.shape[0], original_shape[1] / amap.shape[1]
        regions = []
        for i in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[i])
            regions.append(
                DefectRegion(
                    x=int(x * sx), y=int(y * sy), width=max(1, round(w * sx)), height=max(1, round(h * sy)),
                    area=max(1, round(area * sx * sy)), peak=float(amap[labels == i].max()),
                )
            )
        regions.sort(key=lambda r: r.area, reverse=True)
        return regions[:MAX_REGIONS]

    def full_resolution_map(self, anomaly_map: np.ndarray, original_shape: tuple[int, int]) -> np.ndarray:
        """One frame's map at model scale (h, w) ((1, h, w) too) resized bilinearly (OpenCV) to the frame's own
        ``original_shape`` (H, W), float32."""
        amap = np.asarray(anomaly_map, dtype=np.float32)
        return resize_map(amap.reshape(amap.shape[-2:]), original_shape)
