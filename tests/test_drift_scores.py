"""The score distribution drift check (detector/drift.py, issue 16): per camera, the share of recent frames above the
held-out good images' p95 against the binomial rule, on synthetic score sequences with known distributions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom, binomtest

from linewatch.contracts.settings import DriftSettings, Settings
from linewatch.detector.drift import DriftMonitor, score_alarm_count, score_reference

RULE = DriftSettings()
# a model whose held-out goods' p95 is 0.8 x its image threshold; no frame statistics (the score check alone)
META = {"thresholds": {"image": 2.0}, "validation": {"image_score": {"count": 41, "p95": 1.6, "p99": 1.9}}}
P95 = 0.8


def goods(rng: np.random.Generator, n: int) -> np.ndarray:
    """Normalised scores of good parts as the held-out ones: uniform on [0, 0.8 / 0.95], so 5% are above 0.8."""
    return rng.uniform(0.0, P95 / 0.95, n)


def run(monitor: DriftMonitor, camera: str, scores: np.ndarray, version: str = "v1") -> list[bool]:
    """Feed ``scores`` to ``camera``; its score alarm after each frame."""
    out = []
    for s in scores:
        assert monitor.observe(camera, version, META, None, float(s)) is None  # no frame statistics: no flag
        out.append(monitor.state(camera)["drifting"])
    return out


def test_the_reference_and_the_rule():
    assert score_reference(META) == pytest.approx(P95)
    assert score_reference({"thresholds": {"image": 2.0}}) is None  # a model without validation scores: no check
    assert score_reference({**META, "thresholds": {"image": 0.0}}) is None
    assert score_alarm_count(100, 0.5, 1e-3) == 66
    # the same rule as scipy's one-sided binomial test: 66 of 100 is below alpha, 65 is not
    assert binomtest(66, 100, 0.5, alternative="greater").pvalue < 1e-3 < binomtest(65, 100, 0.5,
                                                                                    alternative="greater").pvalue
    assert score_alarm_count(20, 0.5, 1e-3) == 18
    # false alarms in a window of goods, if the held-out p95 were really the goods' p95 / p80; a 30% defect wave
    p_goods, p_p80, p_wave30 = (binom.sf(65, 100, q) for q in (0.05, 0.20, 0.3 + 0.7 * 0.05))
    print(f"\nP(66+ of 100 above the p95): goods {p_goods:.1e}, if it were a p80 {p_p80:.1e}, "
          f"30% defects {p_wave30:.1e}")
    assert p_goods < 1e-40 and p_p80 < 1e-20 and p_wave30 < 1e-9


def test_goods_never_alarm_and_a_30_percent_defect_wave_does_not_either():
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(RULE)
    assert not any(run(monitor, "cam-good", goods(rng, 2000)))
    state = monitor.state("cam-good")
    assert state["scores"]["frames"] == 100 and state["scores"]["above_p95"] < 15 and state["cause"] is None
    assert state["message"] == "no drift check: off, or the model has no reference statistics"
    # 30% of parts defective, all scoring 1.5-3 x threshold: rejects rise, the score distribution alarm stays down
    wave = goods(rng, 2000)
    defect = rng.random(2000) < 0.3
    wave[defect] = rng.uniform(1.5, 3.0, defect.sum())
    alarms = run(monitor, "cam-wave", wave)
    shares = monitor.state("cam-wave")["scores"]
    print(f"\n30% defects: last window {shares['above_p95']} of 100 above the p95, p = {shares['p_value']:.2g}")
    assert not any(alarms) and 20 < shares["above_p95"] < 50


def test_a_shift_of_every_score_raises_the_alarm_within_a_window_and_clears():
    rng = np.random.default_rng(2)
    monitor = DriftMonitor(RULE)
    run(monitor, "cam", goods(rng, 100))
    shifted = goods(rng, 200) + 0.6  # every part scores 0.6 x threshold more: 76% above the held-out p95
    alarms = run(monitor, "cam", shifted)
    first = alarms.index(True)
    # the alarm needs 66 frames above the p95 in the window of 100
    assert 66 <= first + 1 <= 100 and all(alarms[first:])
    state = monitor.state("cam")
    assert state["drifting"] and state["cause"] == "score_distribution" and state["since"] is not None
    assert state["scores"]["drifting"] and state["scores"]["p_value"] < 1e-3 and state["scores"]["alarm_at"] == 66
    assert state["message"].startswith("score distribution drift: ")
    assert "above the held-out good images' p95 (expected 5%, alarm at 66 of 100)" in state["message"]
    alarms = run(monitor, "cam", goods(rng, 100))
    assert not alarms[-1] and monitor.state("cam")["since"] is None
    # a new model version starts the window afresh: no test before 100 frames
    assert not any(run(monitor, "cam", shifted[:99], version="v2"))
    assert monitor.state("cam")["scores"]["frames"] == 99


def test_with_frame_statistics_as_in_training_the_alarm_says_what_it_may_be(quick_model):
    """The quick bottle model's real reference statistics and held-out p95, with frames whose statistics are as in
    training and scores shifted: the alarm is the score distribution's, and it says it may be real defects."""
    from test_drift import c29_input

    from linewatch.detector.frame_stats import frame_statistics

    meta = quick_model.metadata
    p95 = score_reference(meta)
    assert p95 is not None and 0.3 < p95 < 1.0  # held-out goods' p95 below the threshold (1% false rejects)
    normal = frame_statistics(c29_input("reference_unchanged", 128))
    monitor = DriftMonitor(RULE)
    for _ in range(100):
        flag = monitor.observe("cam", "v1", meta, normal, 1.2)  # every frame above the threshold
    state = monitor.state("cam")
    assert not flag.camera_drifting  # a result's flag follows the frame statistics: no "defect (lighting drift)"
    assert (state["drifting"], state["cause"], state["out_of_range"]) == (True, "score_distribution", 0)
    assert "with lighting as in training" in state["message"] and "defects on most parts" in state["message"]
    weak = frame_statistics(c29_input("vignette_one_lamp_weak", 128))
    for _ in range(RULE.alarm_frames):
        monitor.observe("cam", "v1", meta, weak, 2.9)
    state = monitor.state("cam")
    assert state["cause"] == "lighting+score_distribution"
    assert state["message"].startswith("lighting / exposure drift: saturated")
    assert "; scores shifted too: " in state["message"]


def test_the_score_rule_is_checked_where_it_is_read():
    assert Settings(detector={"drift": {"score_window": 50}}).detector.drift.score_window == 50
    with pytest.raises(ValueError, match="score_share"):
        Settings(detector={"drift": {"score_share": 1.5}})
    off = DriftMonitor(DriftSettings(enabled=False))
    assert off.observe("cam", "v1", META, None, 5.0) is None and off.state("cam")["scores"] is None
