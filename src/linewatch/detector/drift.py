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

**Score distribution** (issue 16): per camera, the share of its last ``score_window`` frames (default 100) whose
normalised image score (score / image threshold) is above the held-out good images' p95 (model.json
``validation.image_score.p95`` / ``thresholds.image``), where 5% is expected. The camera's scores have drifted when
a full window has more than ``score_share`` (default 0.5) of its frames above it, by a one-sided binomial test at
``score_alpha`` (default 1e-3; ``scipy.stats.binomtest``, whose p-value is ``binom.sf(k - 1, n, share)``): with the
defaults, 66 frames of 100. That is, the typical frame now scores like the worst 5% of the held-out goods: the whole
distribution moved, not a tail. False alarms: if the held-out p95 were really the goods' p80 (a p95 estimated on
few held-out images is uncertain), a window of goods reaches 66 with probability 2.5e-23 (``tests/test_drift_scores.py``
prints it), so an alarm in every 1e15 frames of 100-frame windows is not expected even counting each overlapping
window. What it does not catch: a shift that leaves more than half of the frames below the held-out p95 (the frame
statistics are the check for lighting). A wave of real defects on fewer than half of the parts does not raise it:
with 30% defects (all above the p95) the expected share is 0.3 + 0.7 x 5% = 33.5%, and 66 of 100 has probability
3.3e-11; the defect-rate alarm is that wave's alarm. A wave on most parts does raise it, and the alarm says so: a
score shift while the frame statistics are as in training is "defects on most parts, or a change the statistics do
not measure (focus, dirt on the lens, another part variant)"; with the frame statistics out of range too, lighting
comes first. Results' flags (``camera_drifting``, "defect (lighting drift)") follow the frame statistics only,
since a score shift alone does not say lighting.

A frame's verdict is unchanged by drift: a frame above the image threshold is still a defect and still rejected
(a part under bad light may be bad too, and nothing here can tell), but its result carries a
:class:`~linewatch.contracts.messages.DriftFlag` and shows as "defect (lighting drift)" while its camera is in
drift, so a wave of rejects comes with its cause. A model without ``frame_statistics`` (trained before this
check) has no drift check: its results carry no flag and its cameras' states say ``checked: false``.
"""

from __future__ import annotations

import collections
import functools
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

from scipy.stats import binom, binomtest

from linewatch.contracts.messages import DriftFlag
from linewatch.contracts.settings import DriftSettings

from .frame_stats import REFERENCE_FORMAT, STAT_NAMES

FORGET_CAMERA_S = 24 * 3600.0  # a camera silent this long loses its window (as its live state expires)
MAX_REFERENCES = 16  # drift references kept, one per model version (a worker holds a model per product)


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


def score_reference(metadata: dict[str, Any]) -> float | None:
    """The held-out good images' p95 image score over the image threshold (model.json ``validation.image_score.p95``
    / ``thresholds.image``): the normalised score 5% of goods are above, or None when the model records none."""
    try:
        p95, threshold = float(metadata["validation"]["image_score"]["p95"]), float(metadata["thresholds"]["image"])
    except (KeyError, TypeError, ValueError):
        return None
    return p95 / threshold if threshold > 0 and math.isfinite(p95 / threshold) else None


@functools.lru_cache(maxsize=16)
def score_alarm_count(window: int, share: float, alpha: float) -> int:
    """Fewest frames above the held-out p95, of a full window of ``window``, whose one-sided binomial test against
    ``share`` has a p-value below ``alpha`` (``binom.sf(k - 1, window, share) < alpha``); ``window + 1`` if none."""
    return next((k for k in range(math.floor(window * share), window + 1) if binom.sf(k - 1, window, share) < alpha),
                window + 1)


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
    scores: collections.deque = field(default_factory=collections.deque)  # above the held-out p95, per frame
    lighting: bool = False  # the frame statistics' alarm
    scores_drifting: bool = False  # the score distribution's alarm
    since: float | None = None
    seen: float = 0.0

    @property
    def drifting(self) -> bool:
        return self.lighting or self.scores_drifting


class DriftMonitor:
    """Per-camera drift windows of one worker; fed by the inference stage only (not thread-safe).

    A camera's frames arrive in order on one partition, so one worker holds its window; after a rebalance the
    new owner starts an empty one. Windows are kept per camera and model version: a new version starts an empty one
    (the reference changed), and a camera whose frames alternate between products (by their header) keeps one
    window per product's model instead of emptying it at every switch; :attr:`cameras` holds each camera's window
    of the version it was last seen with.
    """

    def __init__(self, settings: DriftSettings):
        self.settings = settings
        self.cameras: dict[str, _Camera] = {}
        self._windows: dict[tuple[str, str], _Camera] = {}  # (camera, model version) -> its windows
        self._references: dict[str, tuple[dict[str, tuple[float, float]] | None, float | None]] = {}

    def reference(self, version: str, metadata: dict[str, Any]) -> dict[str, tuple[float, float]] | None:
        """The drift reference of model ``version`` (:func:`reference_of`, read once per version), or None when
        drift checks are off or the model has none."""
        return self._references_of(version, metadata)[0]

    def _references_of(self, version: str, metadata: dict[str, Any]
                       ) -> tuple[dict[str, tuple[float, float]] | None, float | None]:
        if version not in self._references:
            on = self.settings.enabled
            if len(self._references) >= MAX_REFERENCES:  # one per model held; a long-lived worker sees many
                self._references.clear()
            self._references[version] = (reference_of(metadata) if on else None,
                                         score_reference(metadata) if on else None)
        return self._references[version]

    def observe(self, camera_id: str, version: str, metadata: dict[str, Any], stats: dict[str, float] | None,
                score: float | None = None) -> DriftFlag | None:
        """Add one scored frame of ``camera_id``: its :func:`.frame_stats.frame_statistics` (None when they could
        not be taken) and its normalised image score (score / image threshold; None: not checked). Returns the
        frame's drift flag (of its statistics), or None when they are not checked."""
        now = time.time()
        ref, p95 = self._references_of(version, metadata)
        cam = self._windows.get((camera_id, version))
        if cam is None:
            self._forget(now)
            cam = self._windows[(camera_id, version)] = _Camera(version)
        self.cameras[camera_id] = cam
        cam.seen = now
        was = cam.drifting
        rule = self.settings
        if p95 is not None and score is not None:
            cam.scores.append(score > p95)
            while len(cam.scores) > rule.score_window:
                cam.scores.popleft()
            cam.scores_drifting = (len(cam.scores) == rule.score_window and sum(cam.scores) >= score_alarm_count(
                rule.score_window, rule.score_share, rule.score_alpha))
        flag = None
        if ref is not None and stats is not None:
            z = z_scores(stats, ref, rule.min_spread)
            flag = frame_drift(z, rule.z_threshold, False)
            cam.window.append((flag.out_of_range, z))
            while len(cam.window) > rule.window:
                cam.window.popleft()
            cam.lighting = flag.camera_drifting = sum(out for out, _ in cam.window) >= rule.alarm_frames
        if cam.drifting and not was:
            cam.since = now
        return flag

    def state(self, camera_id: str) -> dict[str, Any]:
        """The camera's drift state for the live state and the metrics (JSON-ready): ``checked`` (frames of it were
        checked: its model has a reference and the check is on), ``drifting`` (either alarm), ``cause``
        (``lighting``, ``score_distribution``, both joined by ``+``, or None), ``out_of_range`` (frames of the
        window), ``frames`` (in the window), ``window`` and ``alarm_frames`` (the rule), ``worst`` (the
        statistic whose median z over the window is largest in magnitude) with that median ``z``, ``z`` (median
        z of every statistic), ``scores`` (:meth:`score_state`), ``since`` (when the alarm rose, Unix s, or None),
        ``at`` (Unix s), ``model_version`` and a one-line ``message``.

        Raises:
            KeyError: a camera never observed.
        """
        cam = self.cameras[camera_id]
        rule = self.settings
        cause = "+".join(c for c, on in (("lighting", cam.lighting), ("score_distribution", cam.scores_drifting)) if on)
        scores = self.score_state(camera_id)
        base = {"camera_id": camera_id, "checked": bool(cam.window) or bool(cam.scores), "drifting": cam.drifting,
                "cause": cause or None, "out_of_range": sum(out for out, _ in cam.window), "frames": len(cam.window),
                "window": rule.window, "alarm_frames": rule.alarm_frames, "scores": scores,
                "since": cam.since if cam.drifting else None, "at": cam.seen, "model_version": cam.version}
        score_text = "" if scores is None else (
            f"{scores['above_p95']} of the last {scores['frames']} frames score above the held-out good images' p95 "
            f"(expected 5%, alarm at {scores['alarm_at']} of {scores['window']})")
        if not cam.window:
            message = "no drift check: off, or the model has no reference statistics"
            if cam.scores_drifting:
                message = f"score distribution drift: {score_text}; no frame statistics to say whether it is lighting"
            return {**base, "worst": None, "z": {}, "worst_z": 0.0, "message": message}
        medians = {n: statistics.median([z[n] for _, z in cam.window]) for n in STAT_NAMES}
        worst = max(medians, key=lambda n: abs(medians[n]))
        out, worst_text = base["out_of_range"], f"{worst} z={medians[worst]:+.1f}"
        if cam.lighting:
            message = f"lighting / exposure drift: {worst_text} in {out} of the last {len(cam.window)} frames"
            message += f"; scores shifted too: {score_text}" if cam.scores_drifting else ""
        elif cam.scores_drifting:
            message = (f"score distribution drift: {score_text}, with lighting as in training (worst {worst_text}): "
                       "defects on most parts, or a change the frame statistics do not measure (focus, dirt on the "
                       "lens, another part variant)")
        elif out:
            message = (f"{out} of the last {len(cam.window)} frames out of range (alarm at {rule.alarm_frames}); "
                       f"worst {worst_text}")
        else:
            message = f"lighting as in training (worst {worst_text})"
        return {**base, "worst": worst, "worst_z": round(medians[worst], 2),
                "z": {n: round(v, 2) for n, v in medians.items()}, "message": message}

    def score_state(self, camera_id: str) -> dict[str, Any] | None:
        """The camera's score distribution check (module docstring), None while none of its frames was checked:
        ``frames`` and ``window``, ``above_p95`` (frames above the held-out goods' p95), ``share`` of them,
        ``expected`` (0.05), ``alarm_at`` (the count that alarms in a full window), ``p_value`` (one-sided binomial
        test of ``above_p95`` against ``score_share``, scipy.stats.binomtest), ``drifting``.

        Raises:
            KeyError: a camera never observed.
        """
        cam, rule = self.cameras[camera_id], self.settings
        if not cam.scores:
            return None
        above, n = int(sum(cam.scores)), len(cam.scores)
        return {"frames": n, "window": rule.score_window, "above_p95": above, "share": round(above / n, 4),
                "expected": 0.05, "alarm_at": score_alarm_count(rule.score_window, rule.score_share, rule.score_alpha),
                "p_value": float(binomtest(above, n, rule.score_share, alternative="greater").pvalue),
                "drifting": cam.scores_drifting}

    def _forget(self, now: float) -> None:
        for camera_id in [c for c, cam in self.cameras.items() if now - cam.seen > FORGET_CAMERA_S]:
            del self.cameras[camera_id]
        for key in [k for k, cam in self._windows.items() if now - cam.seen > FORGET_CAMERA_S]:
            del self._windows[key]
