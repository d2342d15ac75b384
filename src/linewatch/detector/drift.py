"""Lighting and exposure drift: a frame's statistics (:mod:`.frame_stats`) against the training images', per camera.

The rule (settings ``[detector.drift]``, :class:`linewatch.contracts.settings.DriftSettings`):

* per frame, each statistic's robust z-score ``z = (value - median) / max(spread, min_spread x max(|median|, 1))``
  against the ``frame_statistics`` of model.json (median and 1.4826 x MAD of the good training images). The
  floor keeps a training set of near-identical images (spread near 0) from turning JPEG noise into drift: with
  the default 0.01, a mean luma of 137 needs a shift of more than ``z_threshold`` x 1.37 grey levels.
* a frame is *out of range* when any ``|z| > z_threshold`` (default 5: on MVTec bottle, with a reference from 24
  of its good images, the 205 others reached at most 4.3);
* a camera is *in drift* while at least ``alarm_frames`` of its last ``window`` frames are out of range (default
  10 of 20), so one odd frame never raises the alarm but a lamp going weak does within ``alarm_frames`` frames.

A frame's verdict is unchanged by drift: a frame above the image threshold is still a defect and still rejected
(a part under bad light may be bad too, and nothing here can tell), but its result carries a
:class:`~linewatch.contracts.messages.DriftFlag` and shows as "defect (lighting drift)" while its camera is in
drift, so a wave of rejects comes with its cause. A model without ``frame_statistics`` (trained before this
check) has no drift check: its results carry no flag and its cameras' states say ``checked: false``.
"""

from __future__ import annotations

import collections
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from linewatch.contracts.messages import DriftFlag
from linewatch.contracts.settings import DriftSettings

from .frame_stats import REFERENCE_FORMAT, STAT_NAMES

FORGET_CAMERA_S = 24 * 3600.0  # a camera silent this long loses its window (as its live state expires)


def reference_of(metadata: dict[str, Any]) -> dict[str, tuple[float, float]] | None:
    """The drift reference in a model's metadata -> statistic -> (median, spread), or None when the model has
    none (or one of another format, which this release cannot compare against)."""
    ref = metadata.get("frame_statistics")
    if not isinstance(ref, dict) or ref.get("format") != REFERENCE_FORMAT:
        return None
    stats = ref.get("statistics", {})
    if not all(n in stats for n in STAT_NAMES):
        return None
    return {n: (float(stats[n]["median"]), float(stats[n]["spread"])) for n in STAT_NAMES}


def z_scores(stats: dict[str, float], reference: dict[str, tuple[float, float]], min_spread: float
             ) -> dict[str, float]:
    """Robust z-score of each statistic against ``reference`` (formula in the module docstring)."""
    out = {}
    for name, (median, spread) in reference.items():
        out[name] = (stats[name] - median) / max(spread, min_spread * max(abs(median), 1.0))
    return out


def frame_drift(z: dict[str, float], threshold: float, camera_drifting: bool) -> DriftFlag:
    """The drift flag of a frame with z-scores ``z``."""
    worst = max(z, key=lambda n: abs(z[n]))
    beyond = sorted((n for n in z if abs(z[n]) > threshold), key=lambda n: -abs(z[n]))
    return DriftFlag(out_of_range=bool(beyond), camera_drifting=camera_drifting, worst=worst,
                     z=round(z[worst], 2), reasons=[f"{n} z={z[n]:+.1f}" for n in beyond])


@dataclass
class _Camera:
    version: str
    window: collections.deque = field(default_factory=collections.deque)  # (out_of_range, z) per frame
    drifting: bool = False
    since: float | None = None
    seen: float = 0.0


class DriftMonitor:
    """Per-camera drift windows of one worker; fed by the inference stage only (not thread-safe).

    A camera's frames arrive in order on one partition, so one worker holds its window; after a rebalance the
    new owner starts an empty one. A model version change empties the camera's window (the reference changed).
    """

    def __init__(self, settings: DriftSettings):
        self.settings = settings
        self.cameras: dict[str, _Camera] = {}
        self._references: dict[str, dict[str, tuple[float, float]] | None] = {}

    def reference(self, version: str, metadata: dict[str, Any]) -> dict[str, tuple[float, float]] | None:
        """The drift reference of model ``version`` (:func:`reference_of`, read once per version), or None when
        drift checks are off or the model has none."""
        if version not in self._references:
            self._references = {version: reference_of(metadata) if self.settings.enabled else None}
        return self._references[version]

    def observe(self, camera_id: str, version: str, metadata: dict[str, Any], stats: dict[str, float] | None
                ) -> DriftFlag | None:
        """Add one scored frame of ``camera_id`` (its :func:`.frame_stats.frame_statistics`, None when they could
        not be taken) and return its drift flag, or None when there is no drift check."""
        now = time.time()
        ref = self.reference(version, metadata)
        cam = self.cameras.get(camera_id)
        if cam is None or cam.version != version:
            if cam is None:
                self._forget(now)
            cam = self.cameras[camera_id] = _Camera(version)
        cam.seen = now
        if ref is None or stats is None:
            return None
        z = z_scores(stats, ref, self.settings.min_spread)
        flag = frame_drift(z, self.settings.z_threshold, False)
        cam.window.append((flag.out_of_range, z))
        while len(cam.window) > self.settings.window:
            cam.window.popleft()
        drifting = sum(out for out, _ in cam.window) >= self.settings.alarm_frames
        if drifting and not cam.drifting:
            cam.since = now
        cam.drifting = drifting
        flag.camera_drifting = drifting
        return flag

    def state(self, camera_id: str) -> dict[str, Any]:
        """The camera's drift state for the live state and the metrics (JSON-ready): ``checked`` (frames of it were
        checked: its model has a reference and the check is on), ``drifting``, ``out_of_range`` (frames of the
        window), ``frames`` (in the window), ``window`` and ``alarm_frames`` (the rule), ``worst`` (the
        statistic whose median z over the window is largest in magnitude) with that median ``z``, ``z`` (median
        z of every statistic), ``since`` (when the alarm rose, Unix s, or None), ``at`` (Unix s),
        ``model_version`` and a one-line ``message``.

        Raises:
            KeyError: a camera never observed.
        """
        cam = self.cameras[camera_id]
        rule = self.settings
        base = {"camera_id": camera_id, "checked": bool(cam.window), "drifting": cam.drifting,
                "out_of_range": sum(out for out, _ in cam.window), "frames": len(cam.window), "window": rule.window,
                "alarm_frames": rule.alarm_frames, "since": cam.since if cam.drifting else None, "at": cam.seen,
                "model_version": cam.version}
        if not cam.window:
            return {**base, "worst": None, "z": {}, "worst_z": 0.0,
                    "message": "no drift check: off, or the model has no reference statistics"}
        medians = {n: statistics.median([z[n] for _, z in cam.window]) for n in STAT_NAMES}
        worst = max(medians, key=lambda n: abs(medians[n]))
        out, worst_text = base["out_of_range"], f"{worst} z={medians[worst]:+.1f}"
        if cam.drifting:
            message = f"lighting / exposure drift: {worst_text} in {out} of the last {len(cam.window)} frames"
        elif out:
            message = (f"{out} of the last {len(cam.window)} frames out of range (alarm at {rule.alarm_frames}); "
                       f"worst {worst_text}")
        else:
            message = f"lighting as in training (worst {worst_text})"
        return {**base, "worst": worst, "worst_z": round(medians[worst], 2),
                "z": {n: round(v, 2) for n, v in medians.items()}, "message": message}

    def _forget(self, now: float) -> None:
        for camera_id in [c for c, cam in self.cameras.items() if now - cam.seen > FORGET_CAMERA_S]:
            del self.cameras[camera_id]
