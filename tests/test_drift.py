"""Lighting and exposure drift (field case c29): frame statistics against the training images', per frame and per
camera. The reference is the quick bottle model's (24 good bottle images at 128 px), the rule the default one."""

from __future__ import annotations

import statistics
import time

import cv2
import numpy as np
import pytest
from prometheus import scrape

from linewatch.cli.embedded import free_port
from linewatch.contracts.live_state import LiveStateReader
from linewatch.contracts.messages import InspectionResult
from linewatch.contracts.settings import DriftSettings, Settings
from linewatch.contracts.settings_check import unknown_settings
from linewatch.detector.drift import DriftMonitor, frame_drift, reference_of, z_scores
from linewatch.detector.frame_stats import STAT_NAMES, frame_statistics, reference_statistics
from linewatch.detector.imaging import read_image, to_model_input
from linewatch.detector.scoring import Scorer

from datasets import field_case
from pipeline_harness import Pipeline, raw_headers

RULE = DriftSettings()
# c29 input -> (out of range, the statistic furthest from training, its robust z-score), measured
C29 = {
    "reference_unchanged": (False, "top_bottom", -3.1),
    "exposure_gain_0.60": (True, "contrast", -39.7),
    "exposure_gain_0.80": (True, "saturated", -34.7),
    "exposure_gain_1.25": (True, "brightness", 7.6),
    "gamma_0.7": (True, "contrast", -14.9),
    "white_balance_warm": (True, "blue_green", -15.0),
    "vignette_one_lamp_weak": (True, "saturated", -34.7),
}


def c29_input(name: str, size: int) -> np.ndarray:
    return to_model_input(read_image(field_case("c29_lighting") / f"c29_good_bottle_{name}.png"), size)


def test_the_model_records_the_training_images_frame_statistics(quick_model):
    ref = quick_model.metadata["frame_statistics"]
    assert ref["images"] == 24 and ref["side"] == 128 and set(ref["statistics"]) == set(STAT_NAMES)
    brightness = ref["statistics"]["brightness"]
    assert brightness["median"] == pytest.approx(136.81, abs=0.05)  # mean luma of a good bottle, 0..255
    assert brightness["spread"] == pytest.approx(1.48, abs=0.05)
    assert brightness["min"] <= brightness["median"] <= brightness["max"]
    assert reference_of(quick_model.metadata) is not None
    old = {k: v for k, v in quick_model.metadata.items() if k != "frame_statistics"}
    assert reference_of(old) is None  # a model trained before the drift check has none
    assert DriftMonitor(RULE).observe("cam", "v-old", old, frame_statistics(c29_input("gamma_0.7", 128))) is None
    with pytest.raises(ValueError, match="no images"):
        reference_statistics(np.zeros((0, 3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        frame_statistics(np.zeros((3, 8, 8), np.float32))


def test_field_case_c29_each_lighting_change_is_drift_and_the_unchanged_frame_is_not(quick_model):
    ref = reference_of(quick_model.metadata)
    table = []
    for name, (out_of_range, worst, z) in C29.items():
        zs = z_scores(frame_statistics(c29_input(name, quick_model.metadata["image_size"])), ref, RULE.min_spread)
        flag = frame_drift(zs, RULE.z_threshold, camera_drifting=False)
        table.append(f"{name:24s} " + " ".join(f"{n}={zs[n]:+6.1f}" for n in STAT_NAMES))
        assert (flag.out_of_range, flag.worst) == (out_of_range, worst), name
        assert flag.z == pytest.approx(z, abs=0.15), name
        assert all(abs(zs[n]) > RULE.z_threshold for n in (r.split()[0] for r in flag.reasons)), name
    print("\nrobust z-scores against the quick bottle model's 24 good images:\n" + "\n".join(table))


def test_one_odd_frame_never_alarms_a_weak_lamp_does_within_alarm_frames(quick_model):
    meta, version = quick_model.metadata, "v1"
    normal = frame_statistics(c29_input("reference_unchanged", 128))
    weak = frame_statistics(c29_input("vignette_one_lamp_weak", 128))
    warm = frame_statistics(c29_input("white_balance_warm", 128))
    monitor = DriftMonitor(RULE)
    for i in range(40):  # one odd frame in every 20: never an alarm
        flag = monitor.observe("cam-a", version, meta, warm if i % 20 == 5 else normal)
        assert flag is not None and not flag.camera_drifting
    assert monitor.state("cam-a")["out_of_range"] == 1 and not monitor.state("cam-a")["drifting"]
    assert monitor.state("cam-a")["message"].startswith("1 of the last 20 frames out of range (alarm at 10); worst ")
    flags = [monitor.observe("cam-a", version, meta, weak) for _ in range(RULE.alarm_frames)]
    assert [f.camera_drifting for f in flags] == [False] * (RULE.alarm_frames - 1) + [True]
    assert all(f.out_of_range for f in flags)
    state = monitor.state("cam-a")
    assert (state["drifting"], state["out_of_range"], state["frames"]) == (True, RULE.alarm_frames, RULE.window)
    assert state["since"] is not None and state["checked"]
    assert state["message"].startswith("lighting / exposure drift: ")
    for _ in range(RULE.window):  # the lamp is mended: the alarm clears once the window is normal again
        monitor.observe("cam-a", version, meta, normal)
    assert not monitor.state("cam-a")["drifting"] and monitor.state("cam-a")["since"] is None
    assert monitor.state("cam-a")["message"] == "lighting as in training (worst top_bottom z=-3.1)"
    # another camera's window is its own; a new model version starts a camera's window afresh
    assert monitor.observe("cam-b", version, meta, weak).camera_drifting is False
    for _ in range(RULE.alarm_frames):
        monitor.observe("cam-b", version, meta, weak)
    assert monitor.state("cam-b")["drifting"] and not monitor.state("cam-a")["drifting"]
    monitor.observe("cam-b", "v2", meta, weak)
    assert monitor.state("cam-b")["frames"] == 1 and not monitor.state("cam-b")["drifting"]


def test_a_camera_alternating_two_products_keeps_a_window_per_products_model(quick_model):
    """Frames of one camera naming two products by header (issue 18): each product's model keeps its own window,
    so a weak lamp still raises the alarm instead of the windows emptying at every switch."""
    meta = quick_model.metadata
    weak = frame_statistics(c29_input("vignette_one_lamp_weak", 128))
    monitor = DriftMonitor(RULE)
    for _ in range(RULE.alarm_frames):
        monitor.observe("cam-a", "bottle/v1", meta, weak)
        monitor.observe("cam-a", "tile/v1", meta, weak)
    state = monitor.state("cam-a")
    assert (state["model_version"], state["frames"], state["drifting"]) == ("tile/v1", RULE.alarm_frames, True)


def test_the_drift_rule_is_checked_where_it_is_read():
    with pytest.raises(ValueError, match="alarm_frames 6 is more than window 5"):
        Settings(detector={"drift": {"window": 5, "alarm_frames": 6}})
    assert unknown_settings({"LINEWATCH_DETECTOR__DRIFT__WINDOWS": "30"}) == ["LINEWATCH_DETECTOR__DRIFT__WINDOWS"]
    assert Settings(detector={"drift": {"z_threshold": 4}}).detector.drift.z_threshold == 4.0


def test_frame_statistics_cost_little_against_scoring(quick_model):
    scorer = Scorer(quick_model.model_dir, "cpu")
    x128 = c29_input("reference_unchanged", 128)
    x256 = c29_input("reference_unchanged", 256)

    def per_call_ms(fn, n: int) -> float:
        fn()
        runs = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            runs.append((time.perf_counter() - t0) / n * 1000)
        return statistics.median(runs)

    stats_128 = per_call_ms(lambda: frame_statistics(x128), 50)
    stats_256 = per_call_ms(lambda: frame_statistics(x256), 50)
    batch = np.stack([x128] * 8)
    score_128 = per_call_ms(lambda: scorer.score(batch), 1) / 8
    print(f"\nframe statistics: {stats_128:.2f} ms per frame at 128 px, {stats_256:.2f} ms at 256 px; "
          f"scoring the quick model (128 px, batch of 8): {score_128:.1f} ms per frame")
    assert stats_256 < 0.25 * score_128 and stats_128 < 0.1 * score_128


def c29_jpeg(name: str) -> bytes:
    """A c29 input as a camera sends it (JPEG, the cameras' default quality 92)."""
    bgr = cv2.imread(str(field_case("c29_lighting") / f"c29_good_bottle_{name}.png"), cv2.IMREAD_COLOR)
    ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return jpeg.tobytes()


@pytest.mark.services
def test_field_case_c29_a_weak_lamp_raises_its_cameras_drift_alarm_through_the_pipeline(
        apache_kafka, redis_url, postgres_server, tmp_path, quick_model):
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, postgres_server.url, tmp_path / "state",
                 quick_model.model_dir)
    try:
        metrics_port = free_port()
        p.env["LINEWATCH_DETECTOR__METRICS_PORT"] = str(metrics_port)
        p.start_worker("w1")
        frames = 24
        cameras = (("cam-lamp", "vignette_one_lamp_weak", 1000), ("cam-ok", "reference_unchanged", 5000))
        for camera, name, first in cameras:
            image = c29_jpeg(name)
            p.publish_raw([(image, raw_headers(camera, "L1", first + n)) for n in range(frames)], camera_id=camera)
        assert p.wait_for_rows(2 * frames) == 2 * frames
        reader = LiveStateReader(p.redis)
        drift = p.wait_until(lambda: (d := reader.drift()) and all(d.get(c, {}).get("frames") == RULE.window
                                                                   for c in ("cam-lamp", "cam-ok")) and d,
                             timeout_s=30, what="both cameras' drift states with a full window")
        lamp, ok = drift["cam-lamp"], drift["cam-ok"]
        assert (lamp["drifting"], lamp["out_of_range"], lamp["worst"]) == (True, RULE.window, "saturated")
        assert lamp["worst_z"] == pytest.approx(-34.7, abs=1.0) and lamp["since"] is not None
        assert lamp["message"].startswith("lighting / exposure drift: saturated z=-3")
        assert (ok["drifting"], ok["out_of_range"], ok["since"]) == (False, 0, None)
        assert abs(ok["worst_z"]) < RULE.z_threshold
        metrics = scrape(metrics_port)
        assert metrics['linewatch_camera_drift{camera_id="cam-lamp"}'] == 1
        assert metrics['linewatch_camera_drift{camera_id="cam-ok"}'] == 0
        assert metrics['linewatch_camera_drift_worst_z{camera_id="cam-lamp"}'] == pytest.approx(34.7, abs=1.0)
        # Every result carries its frame's flag; the camera's alarm rises with its 10th frame out of range.
        results = [InspectionResult.from_json(m.value)
                   for m in p.consume(p.settings.kafka.inspections_topic, 2 * frames)]
        lamp_results = sorted((r for r in results if r.frame.camera_id == "cam-lamp"), key=lambda r: r.frame.frame_id)
        assert all(r.drift is not None and r.drift.out_of_range for r in lamp_results)
        assert [r.drift.camera_drifting for r in lamp_results] == [False] * 9 + [True] * (frames - 9)
        assert lamp_results[-1].drift.reasons[0].startswith("saturated z=-3")
        # The quick model rejects the weak-lamp bottle (2.94 x threshold): still a defect, shown with its cause.
        assert all(r.verdict == "defect" and r.normalized_score > 1.5 for r in lamp_results)
        assert [r.verdict_label for r in lamp_results] == ["defect"] * 9 + ["defect (lighting drift)"] * (frames - 9)
        print("\nweak-lamp verdicts:", [f"{r.normalized_score:.2f} {r.verdict_label}" for r in lamp_results])
        assert all(r.drift is not None and not r.drift.out_of_range and not r.drift.camera_drifting
                   for r in results if r.frame.camera_id == "cam-ok")
        # The record holds the same flags (column inspections.drift).
        rows = {(r.camera_id, r.frame_id): r.drift for r in p.rows()}
        assert [rows["cam-lamp", r.frame.frame_id] for r in lamp_results] == [r.drift.model_dump()
                                                                              for r in lamp_results]
        assert {rows[k]["out_of_range"] for k in rows if k[0] == "cam-ok"} == {False}
        assert p.stop_workers() == {"w1": 0}
    finally:
        p.close()


def test_a_frame_whose_statistics_fail_is_scored_without_a_drift_check_on_the_cpu_too(quick_model, monkeypatch):
    """A statistic is not the frame: a decoded frame whose statistics raise is prepared with none (no drift check
    for it), as on the GPU path, never dead-lettered as undecodable."""
    from linewatch.contracts.messages import FrameMeta
    from linewatch.detector.stream import frames
    from linewatch.detector.stream.batches import PreparedFrame, RawFrame

    scorer = Scorer(quick_model.model_dir, "cpu")
    path = field_case("c29_lighting") / "c29_good_bottle_reference_unchanged.png"
    rgb, data = read_image(path), path.read_bytes()
    meta = FrameMeta("cam-1", "line-1", 7, time.time_ns(), "image/png")
    raw = RawFrame("t.frames", 0, 7, b"cam-1", data, meta.headers())
    kept = frames.prepare_frame(raw, scorer.geometry, 40_000_000)
    assert isinstance(kept, PreparedFrame) and set(kept.stats) == set(STAT_NAMES)

    def broken(_frame):
        raise ValueError("a statistic failed")

    monkeypatch.setattr(frames, "input_statistics", broken)
    prepared = frames.prepare_frame(raw, scorer.geometry, 40_000_000)
    assert isinstance(prepared, PreparedFrame), prepared
    assert prepared.stats is None
    assert prepared.width == rgb.shape[1] and prepared.height == rgb.shape[0]
