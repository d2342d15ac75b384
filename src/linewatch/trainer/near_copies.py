"""Near-copies and stalled scenes among confirmed goods, thinned out before training.

Two frames' distance is the mean absolute difference of their 32x32 RGB thumbnails (box-filtered from the
decoded pixels the model scores), each standardised to mean 0 and standard deviation 1. Measured on MVTec AD
bottle (229 good images, 26,106 pairs): JPEG re-encodes at q91 are <= 0.0016 apart and 1-px shifts <= 0.0075;
sensor noise (sigma 2) with a +-6% lamp gain <= 0.016; 99.9% of pairs of distinct bottles are >= 0.028 apart
(the closest pair 0.014). A perceptual hash (imagehash pHash, 256 bits) could not tell these apart: distinct
bottles were as close as 12 bits while 1-px-shifted copies reached 18, so it is not used.

Rules, per camera, frames taken in capture order (``trainer.*`` settings):

1. *copies*: a frame within ``near_copy_distance`` of a frame already kept is dropped (one of each is kept);
2. *scene cap*: a frame within ``scene_distance`` of ``scene_cap`` frames already kept in the same
   ``scene_window_s`` window of capture time is dropped (a stalled conveyor gives a few frames, not forty).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from linewatch.contracts.trainer_settings import TrainerSettings

THUMBNAIL_SIDE = 32


def thumbnail(rgb: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB -> float32 (32, 32, 3) box-filtered thumbnail, standardised to mean 0 and standard
    deviation 1 (a uniform gain or offset of the lamp changes nothing)."""
    small = np.asarray(Image.fromarray(rgb).resize((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BOX),
                       dtype=np.float32)
    return (small - small.mean()) / max(float(small.std()), 1.0)


def distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two standardised thumbnails (in standard deviations)."""
    return float(np.abs(a - b).mean())


@dataclass
class Candidate:
    """A confirmed good offered for training: its file, camera, capture time and thumbnail."""

    path: Path
    camera_id: str
    captured_at: dt.datetime
    thumb: np.ndarray


def thin_out(frames: list[Candidate], guards: TrainerSettings) -> tuple[list[Candidate], list[tuple[Candidate, str]]]:
    """Apply the module's rules -> (kept frames, [(dropped frame, why)]), both in the order given."""
    kept: list[Candidate] = []
    dropped: list[tuple[Candidate, str]] = []
    by_camera: dict[str, list[Candidate]] = {}
    window = guards.scene_window_s
    for frame in sorted(frames, key=lambda f: (f.camera_id, f.captured_at)):
        same_camera = by_camera.setdefault(frame.camera_id, [])
        why = None
        if guards.near_copy_distance is not None:
            near = [(distance(frame.thumb, k.thumb), k) for k in same_camera]
            copy = min(near, key=lambda x: x[0], default=None)
            if copy is not None and copy[0] <= guards.near_copy_distance:
                why = f"near-copy of {copy[1].path.name} (distance {copy[0]:.2f} <= {guards.near_copy_distance:g})"
        if why is None and guards.scene_cap is not None:
            bucket = int(frame.captured_at.timestamp() // window)
            scene = [k for k in same_camera if int(k.captured_at.timestamp() // window) == bucket
                     and distance(frame.thumb, k.thumb) <= guards.scene_distance]
            if len(scene) >= guards.scene_cap:
                why = (f"scene cap: {len(scene)} frames of the same scene already kept from camera "
                       f"{frame.camera_id} in this {window:g}-s window")
        if why is None:
            same_camera.append(frame)
            kept.append(frame)
        else:
            dropped.append((frame, why))
    order = {id(f): i for i, f in enumerate(frames)}
    return sorted(kept, key=lambda f: order[id(f)]), sorted(dropped, key=lambda d: order[id(d[0])])
