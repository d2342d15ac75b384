"""The model's input geometry (model.json ``input``): how a frame of any size and shape becomes model inputs, and
how their anomaly maps become one map of the frame. Training, calibration, evaluation, ``linewatch score``, the
workers and the trainer's promotion review all go through :func:`model_inputs` and :func:`stitch`.

Modes (S = the model's ``size``):

* ``resize``: the frame squeezed to S x S, its aspect ratio not kept (the authors'
  ``transforms.Resize([256, 256])``). Every model.json without an ``input`` field is read as this mode, so models
  made before the field existed score exactly as they did.
* ``letterbox``: scaled so that its longer side is S (aspect ratio kept), the shorter side padded to S, centred.
* ``tile``: scaled by ``tile_scale`` (model pixels per frame pixel), padded as above to at least S on each side,
  and cut into S x S windows that overlap by at least ``tile_overlap`` of S, evenly spaced, the first and last
  flush with the edges.
* ``auto`` (the default for new models): ``letterbox`` up to ``max_aspect`` (longer side / shorter side, 2.0:
  4:3, 16:10 and 16:9 cameras are letterboxed), ``tile`` beyond it (line-scan strips), never squeezed.
  ``tile_scale`` is measured on the training images (:meth:`InputGeometry.resolved`): a strip is tiled at the
  pixel scale the model learnt its parts at.

Padding reflects the image about its edge pixel (OpenCV ``BORDER_REFLECT_101``, PyTorch ``reflect``): a constant
border would be an edge the student never saw in the part. Padded pixels are cut off the map and never score.
A square frame is letterboxed without padding, to exactly the pixels ``resize`` gives it.

Stitching: in overlaps the tiles' maps are combined by their maximum. The image score is the maximum of the map
(STPM Sec. 3.3), so with the maximum it is exactly the largest score any tile gives the frame's own pixels: a
defect that one window sees near its edge is not averaged away by a neighbour that sees it less well, and the
score stays the same function of a window whether the window stands alone or among others. A mean would lower
exactly those scores and make the frame score depend on how the windows happen to fall.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import cv2
import numpy as np

from .imaging import ImageError, resize_image

MODES = ("resize", "letterbox", "tile", "auto")
DEFAULT_MODE = "auto"
DEFAULT_MAX_ASPECT = 2.0
DEFAULT_TILE_OVERLAP = 0.25
# At most this many windows per frame: 256 windows of 256 px at overlap 0.25 cover about 9.4 MP at scale 1.
MAX_TILES = 256


@dataclass(frozen=True)
class InputGeometry:
    """The input geometry of a model (see the module docstring); ``size`` is the model's ``image_size``.

    Raises (constructor): ValueError: an unknown mode, ``max_aspect`` below 1, ``tile_overlap`` outside [0, 0.9],
        or a ``tile_scale`` that is not positive.
    """

    mode: str = DEFAULT_MODE
    size: int = 256
    max_aspect: float = DEFAULT_MAX_ASPECT
    tile_scale: float | None = None
    tile_overlap: float = DEFAULT_TILE_OVERLAP

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"input mode {self.mode!r} is not one of {', '.join(MODES)}")
        if not self.max_aspect >= 1:
            raise ValueError(f"input max_aspect must be at least 1, got {self.max_aspect}")
        if not 0 <= self.tile_overlap <= 0.9:
            raise ValueError(f"input tile_overlap must be within [0, 0.9], got {self.tile_overlap}")
        if self.tile_scale is not None and not self.tile_scale > 0:
            raise ValueError(f"input tile_scale must be positive, got {self.tile_scale}")

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> InputGeometry:
        """The geometry a model.json records; ``resize`` at ``image_size`` when it has no ``input`` field.

        Raises:
            ValueError: an invalid ``input`` field, a size other than ``image_size``, or a tiling mode without
                its ``tile_scale``.
        """
        size = int(meta["image_size"])
        recorded = meta.get("input")
        if recorded is None:
            return cls(mode="resize", size=size)
        if not isinstance(recorded, dict):
            raise ValueError(f"input must be an object, got {recorded!r}")
        try:
            geometry = cls(mode=recorded["mode"], size=int(recorded.get("size", size)),
                           max_aspect=float(recorded.get("max_aspect", DEFAULT_MAX_ASPECT)),
                           tile_scale=None if recorded.get("tile_scale") is None else float(recorded["tile_scale"]),
                           tile_overlap=float(recorded.get("tile_overlap", DEFAULT_TILE_OVERLAP)))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"input {recorded!r} is not a valid input geometry ({exc!r})") from None
        if geometry.size != size:
            raise ValueError(f"input size {geometry.size} differs from image_size {size}")
        if geometry.mode in ("tile", "auto") and geometry.tile_scale is None:
            raise ValueError(f"input mode {geometry.mode!r} without its tile_scale")
        return geometry

    def as_dict(self) -> dict[str, Any]:
        """The model.json ``input`` field (with the fixed padding and stitching rules, for the reader)."""
        return {**asdict(self), "padding": "reflect (OpenCV BORDER_REFLECT_101)", "stitch": "max"}

    def recipe(self) -> dict[str, Any]:
        """This geometry as training-recipe fields (``TrainConfig``: ``input_mode``, ``max_aspect``, ``tile_scale``,
        ``tile_overlap``), so a fine-tune sees its images exactly as its parent did."""
        return {"input_mode": self.mode, "max_aspect": self.max_aspect, "tile_scale": self.tile_scale,
                "tile_overlap": self.tile_overlap}

    def resolved(self, sizes: Iterable[tuple[int, int]]) -> InputGeometry:
        """This geometry with ``tile_scale`` measured on training images of ``sizes`` (H, W) when it tiles and has
        none: the median of S / longer side over the images up to ``max_aspect`` (the scale letterboxing gives
        them), and of S / shorter side over longer ones (a strip's width fills a window). Unchanged otherwise.

        Raises:
            ValueError: no sizes to measure on.
        """
        if self.mode not in ("tile", "auto") or self.tile_scale is not None:
            return self
        scales = [self.size / (max(h, w) if _aspect(h, w) <= self.max_aspect else min(h, w)) for h, w in sizes]
        if not scales:
            raise ValueError("no images to measure the tile scale on")
        return replace(self, tile_scale=float(statistics.median(scales)))

    def plan(self, height: int, width: int, source: str = "<image>") -> FramePlan:
        """Where a frame of ``height`` x ``width`` pixels goes in the model's inputs.

        Raises:
            ImageError: ``too_many_tiles``, more than :data:`MAX_TILES` windows (a frame far larger than the
                model's pixel scale); ValueError: a tiling mode without ``tile_scale`` (see :meth:`resolved`).
        """
        s = self.size
        mode = self.mode
        if mode == "auto":
            mode = "letterbox" if _aspect(height, width) <= self.max_aspect else "tile"
        if mode == "resize":
            scaled = (s, s)
        elif mode == "letterbox":
            scale = s / max(height, width)
            scaled = (max(1, round(height * scale)), max(1, round(width * scale)))
        else:
            if self.tile_scale is None:
                raise ValueError("a tiling geometry needs its tile_scale (InputGeometry.resolved)")
            scaled = (max(1, round(height * self.tile_scale)), max(1, round(width * self.tile_scale)))
        padded = (max(scaled[0], s), max(scaled[1], s))
        offset = ((padded[0] - scaled[0]) // 2, (padded[1] - scaled[1]) // 2)
        rows, cols = _starts(padded[0], s, self.tile_overlap), _starts(padded[1], s, self.tile_overlap)
        if len(rows) * len(cols) > MAX_TILES:
            raise ImageError("too_many_tiles", source,
                             f"{width}x{height} at {self.tile_scale:g} model pixels per pixel needs "
                             f"{len(rows) * len(cols)} windows of {s} px, more than {MAX_TILES}")
        return FramePlan(self, mode, (height, width), scaled, padded, offset,
                         tuple((y, x) for y in rows for x in cols))


@dataclass(frozen=True)
class FramePlan:
    """Where one frame goes in the model's inputs (all sizes (rows, columns), in pixels).

    ``frame``: the frame's own size; ``scaled``: the frame resized for the model (its map at model scale has this
    shape); ``padded``: the canvas, ``scaled`` padded to at least S a side with the frame at ``offset``;
    ``windows``: the top-left corners of the S x S model inputs in the canvas, row by row. ``mode`` is the mode
    applied (``auto`` resolved to ``letterbox`` or ``tile``).
    """

    geometry: InputGeometry
    mode: str
    frame: tuple[int, int]
    scaled: tuple[int, int]
    padded: tuple[int, int]
    offset: tuple[int, int]
    windows: tuple[tuple[int, int], ...]

    @property
    def pads(self) -> tuple[int, int, int, int]:
        """Padding (top, bottom, left, right) from ``scaled`` to ``padded``."""
        (top, left), (sh, sw), (ph, pw) = self.offset, self.scaled, self.padded
        return top, ph - sh - top, left, pw - sw - left


@dataclass
class FrameInput:
    """A frame ready for the model: ``tiles`` uint8 (T, 3, S, S) RGB (a NumPy array, or a tensor on the scoring
    device when decoded there) and their ``plan`` (T = ``len(plan.windows)``)."""

    tiles: Any
    plan: FramePlan


def model_inputs(rgb: np.ndarray, geometry: InputGeometry, source: str = "<image>") -> FrameInput:
    """The model inputs of a uint8 (H, W, 3) RGB frame under ``geometry``: resized (area averaging when shrinking,
    bilinear when enlarging: :func:`.imaging.resize_image`), padded by reflection, cut into windows.

    Raises:
        ImageError: see :meth:`InputGeometry.plan`.
    """
    plan = geometry.plan(rgb.shape[0], rgb.shape[1], source)
    canvas = resize_image(rgb, *plan.scaled)
    if plan.padded != plan.scaled:
        canvas = cv2.copyMakeBorder(canvas, *plan.pads, cv2.BORDER_REFLECT_101)
    s = geometry.size
    tiles = np.stack([canvas[y : y + s, x : x + s] for y, x in plan.windows]).transpose(0, 3, 1, 2)
    return FrameInput(np.ascontiguousarray(tiles), plan)


def stitch(tile_maps: np.ndarray, plan: FramePlan) -> np.ndarray:
    """The anomaly map of a frame at model scale from its windows' maps: float32 (T, S, S) (or (T, 1, S, S)) ->
    float32 ``plan.scaled``, the maximum where windows overlap, padding cut off. One window without padding
    (``resize``, a square frame's ``letterbox``) is returned as it is."""
    s = plan.geometry.size
    maps = np.asarray(tile_maps, dtype=np.float32).reshape(len(plan.windows), s, s)
    if len(plan.windows) == 1:
        canvas = maps[0]
    else:
        canvas = np.full(plan.padded, -np.inf, dtype=np.float32)
        for (y, x), m in zip(plan.windows, maps, strict=True):
            np.maximum(canvas[y : y + s, x : x + s], m, out=canvas[y : y + s, x : x + s])
    (top, left), (h, w) = plan.offset, plan.scaled
    return canvas[top : top + h, left : left + w]


def stitch_batch(tile_maps: np.ndarray, plans: Sequence[FramePlan]) -> list[np.ndarray]:
    """:func:`stitch` for consecutive frames whose windows are concatenated in ``tile_maps`` (T_total, ...).

    Raises:
        ValueError: the number of maps is not the plans' number of windows.
    """
    total = sum(len(plan.windows) for plan in plans)
    if total != len(tile_maps):
        raise ValueError(f"{len(tile_maps)} window maps for plans of {total} windows")
    out, start = [], 0
    for plan in plans:
        out.append(stitch(tile_maps[start : start + len(plan.windows)], plan))
        start += len(plan.windows)
    return out


def _aspect(height: int, width: int) -> float:
    return max(height, width) / max(1, min(height, width))


def _starts(length: int, size: int, overlap: float) -> list[int]:
    """Window starts along a side of ``length`` >= ``size``: n evenly spaced windows, the first at 0 and the last
    flush with the end, n the fewest whose neighbours overlap by at least ``overlap * size``."""
    if length <= size:
        return [0]
    stride = max(1.0, size * (1.0 - overlap))
    n = math.ceil((length - size) / stride) + 1
    return [round(i * (length - size) / (n - 1)) for i in range(n)]
