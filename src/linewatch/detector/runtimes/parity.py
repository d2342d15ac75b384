"""Parity of a runtime with eager PyTorch: the same scores and anomaly maps, to a relative tolerance.

Relative differences (float32 at both ends):

* image scores: ``max_i |s_i - r_i| / |r_i|``;
* anomaly maps: per image ``max |m - r| / max |r|`` over its pixels (relative to the map's own scale: a map is
  near 0 over most of a good part, where an element-wise ratio would only measure float32 noise), the largest
  over the images;
* global scores (models with a global branch, :mod:`..global_branch`): as image scores.

``PARITY_TOLERANCE`` is 1e-5 relative: float32 holds about 7 significant digits and an other runtime's different
order of additions moves a score by a few 1e-7 (ONNX Runtime measured 3.4e-7 on scores and 1.5e-6 on maps of the
256-pixel bottle model), while 1e-5 is far below any verdict margin that matters.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..imaging import ImageError, decode_image

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
PARITY_IMAGES = 8  # held-out goods compared at most: enough to cover the model's range of scores, quick to load


@dataclass(frozen=True)
class Parity:
    """The outcome of one comparison: ``images`` compared, ``score_rel``, ``map_rel`` and ``global_rel`` (None
    without a global branch; module docstring), ``on`` what (``held-out goods`` or ``seeded noise images``),
    ``passed`` = all within ``tolerance``."""

    images: int
    score_rel: float
    map_rel: float
    on: str
    tolerance: float = PARITY_TOLERANCE
    global_rel: float | None = None

    @property
    def passed(self) -> bool:
        return (self.score_rel <= self.tolerance and self.map_rel <= self.tolerance
                and (self.global_rel is None or self.global_rel <= self.tolerance))

    def record(self) -> dict[str, Any]:
        """JSON-ready, with ``passed``."""
        return {**asdict(self), "passed": self.passed}


def compare(reference: tuple[np.ndarray, ...], candidate: tuple[np.ndarray, ...], on: str) -> Parity:
    """:class:`Parity` of ``candidate`` (scores (B,), maps (B, 1, S, S)[, global scores (B,)]) against
    ``reference`` (the same outputs and shapes).

    Raises:
        ValueError: the shapes or the number of outputs differ.
    """
    if len(reference) != len(candidate):
        raise ValueError(f"{len(candidate)} outputs, the reference has {len(reference)}: export the model again")
    (rs, rm), (cs, cm) = reference[:2], candidate[:2]
    if rs.shape != cs.shape or rm.shape != cm.shape:
        raise ValueError(f"shapes differ: scores {rs.shape} vs {cs.shape}, maps {rm.shape} vs {cm.shape}")
    flat_r, flat_c = rm.reshape(len(rm), -1).astype(np.float64), cm.reshape(len(cm), -1).astype(np.float64)
    scale = np.maximum(np.abs(flat_r).max(axis=1), np.finfo(np.float32).tiny)
    map_rel = float(np.max(np.abs(flat_c - flat_r).max(axis=1) / scale))
    global_rel = _relative(reference[2], candidate[2]) if len(reference) > 2 else None
    return Parity(images=len(rs), score_rel=_relative(rs, cs), map_rel=map_rel, on=on, global_rel=global_rel)


def _relative(reference: np.ndarray, candidate: np.ndarray) -> float:
    """``max_i |c_i - r_i| / |r_i|`` in float64. Raises ValueError: the shapes differ."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    r, c = reference.astype(np.float64), candidate.astype(np.float64)
    return float(np.max(np.abs(c - r) / np.maximum(np.abs(r), np.finfo(np.float32).tiny)))


def readable_goods(meta: dict[str, Any], role: str = "val") -> Iterator[tuple[str, np.ndarray]]:
    """The model's own goods of ``role`` (``manifest`` entries of ``model.json``: ``val`` the held-out goods its
    threshold was calibrated on, ``train`` those it was trained on), as (path, uint8 (H, W, 3) RGB), in manifest
    order.

    An image whose bytes no longer have the SHA-256 recorded at training time is skipped (it is not the image the
    model was calibrated on), as is one that is missing or does not decode: a worker on another machine has none.
    """
    for entry in meta.get("manifest", []):
        if entry.get("role") != role:
            continue
        try:
            data = Path(entry["path"]).read_bytes()
        except (OSError, KeyError):
            continue
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            continue
        try:
            yield entry["path"], decode_image(data, entry["path"])
        except ImageError:
            continue


def held_out_inputs(meta: dict[str, Any], prepare: Callable[[np.ndarray], np.ndarray],
                    limit: int = PARITY_IMAGES) -> np.ndarray | None:
    """The model's own held-out goods (:func:`readable_goods` of role ``val``) as uint8 (n, 3, S, S) model input
    windows made by ``prepare`` (the scorer's :meth:`~..scoring.Scorer.windows`: one or more windows an image,
    :mod:`..geometry`), at most ``limit`` windows (a tiled model's images have many, and every runtime scores them
    in one call at each load); None when none is readable here.
    """
    out = []
    for _, rgb in readable_goods(meta, "val"):
        out.append(prepare(rgb))
        if sum(len(w) for w in out) >= limit:
            break
    return np.concatenate(out)[:limit] if out else None


def noise_inputs(image_size: int, count: int = 4, seed: int = 0) -> np.ndarray:
    """``count`` seeded uniform-noise uint8 (count, 3, S, S) inputs: the parity check's stand-in where no held-out
    good is readable (noise scores high, far from the goods, which is a harder test of the numerics, not easier)."""
    return np.random.default_rng(seed).integers(0, 256, (count, 3, image_size, image_size), dtype=np.uint8)


def parity_inputs(meta: dict[str, Any], prepare: Callable[[np.ndarray], np.ndarray],
                  image_size: int) -> tuple[np.ndarray, str]:
    """The held-out goods (:func:`held_out_inputs`) or, where none is readable, :func:`noise_inputs`; with what they
    are (``held-out goods`` / ``seeded noise images``)."""
    goods = held_out_inputs(meta, prepare)
    if goods is not None:
        return goods, "held-out goods"
    log.info("no held-out good of the model is readable here: the parity check runs on seeded noise images")
    return noise_inputs(image_size), "seeded noise images"
