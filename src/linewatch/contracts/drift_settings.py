"""The ``[detector.drift]`` section of the settings (:mod:`.settings` assembles it with the others): the rules of
the per-camera drift check, of its frame statistics and of its score distribution (``linewatch.detector.drift``)."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class DriftSettings(BaseModel):
    """Lighting / exposure drift of each camera against the training images' frame statistics, and its image scores
    against the held-out goods' (the rules and their defaults' evidence: ``linewatch.detector.drift``).
    ``[detector.drift]`` in a config file."""

    enabled: bool = Field(True, description="compare frame statistics with the model's (models without any: off)")
    z_threshold: float = Field(5.0, gt=0, description="a frame is out of range when a statistic's robust z-score "
                               "is beyond this")
    min_spread: float = Field(0.01, gt=0, description="floor of a statistic's training spread, as a share of "
                              "max(|training median|, 1)")
    window: int = Field(20, ge=1, le=10_000, description="a camera's recent frames the alarm looks at")
    alarm_frames: int = Field(10, ge=1, description="a camera is in drift while this many of its last `window` "
                              "frames are out of range")
    score_window: int = Field(100, ge=10, le=10_000, description="a camera's recent image scores the score "
                              "distribution check looks at (it tests only a full window)")
    score_share: float = Field(0.5, gt=0, lt=1, description="the score distribution has drifted when more than this "
                               "share of the window's frames score above the held-out goods' p95 (expected: 5%)")
    score_alpha: float = Field(1e-3, gt=0, lt=0.5, description="significance of that excess (one-sided binomial "
                               "test, scipy.stats.binomtest)")

    @model_validator(mode="after")
    def _alarm_within_window(self) -> DriftSettings:
        if self.alarm_frames > self.window:
            raise ValueError(f"alarm_frames {self.alarm_frames} is more than window {self.window}: never alarms")
        return self
