"""The line's alarms: judged from a snapshot (pure), then observed on real Redis and SQLite by the dashboard's
alarm watch, with the Prometheus gauges it sets; deploy/'s alert rules and Grafana dashboard use only those
metric names (and promtool accepts the rules)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis
import yaml
from prometheus_client import REGISTRY

from linewatch.cli.embedded import free_port
from linewatch.contracts.clock import ClockRule
from linewatch.contracts.dashboard_settings import AlarmSettings
from linewatch.contracts.live_state import Counts, LiveStateWriter
from linewatch.contracts.messages import FrameRef, InspectionResult, Latency
from linewatch.contracts.settings import Settings
from linewatch.dashboard.alarm_watch import AlarmWatch
from linewatch.dashboard.alarms import CameraView, Observed, evaluate
from linewatch.dashboard.banner import lines

REPO = Path(__file__).resolve().parents[1]
NOW = 1_800_000_000.0
RULES = AlarmSettings(behind_after_s=60, heartbeat_stale_s=10, defect_rate_max=0.2,
                      defect_rate_max_by_line={"L2": 0.5}, defect_rate_min_frames=20)


def result(camera: str, frame_id: int, processed: float, behind_s: float, verdict: str = "good",
           line: str = "L1") -> InspectionResult:
    at = dt.datetime.fromtimestamp(processed, dt.UTC)
    return InspectionResult(
        frame=FrameRef(camera_id=camera, line_id=line, frame_id=frame_id, captured_at=at - dt.timedelta(
            seconds=behind_s), topic="lw.frames", partition=0, offset=frame_id),
        width=8, height=8, model_version="v1", image_score=2.0 if verdict == "defect" else 0.5,
        normalized_score=2.0 if verdict == "defect" else 0.5, verdict=verdict, threshold=1.0,
        latency=Latency(queue_wait_ms=0, decode_ms=1, inference_ms=1, total_ms=behind_s * 1000),
        processed_at=at, worker_id="w-1")


def kinds(alarms) -> list[tuple[str, str, str]]:
    return [(a.kind, a.subject, a.severity) for a in alarms]


def test_each_alarm_is_raised_from_the_figures_of_one_snapshot():
    beat = {"worker_id": "w-1", "last_seen": NOW - 2, "lag": {"lw.frames/0": 40}}
    behind = CameraView("cam-a", "L1", NOW - 1, latest=result("cam-a", 7, NOW - 5, 600), lag=40)
    caught_up = CameraView("cam-b", "L1", NOW - 1, latest=result("cam-b", 7, NOW - 5, 600), lag=0)
    skewed = CameraView("cam-c", "L2", NOW - 1, skew_ms=-300_000, skewed=12,
                        latest=result("cam-c", 1, NOW - 1, 0.4, line="L2"), lag=None)
    seen = Observed(NOW, {"cam-a": behind, "cam-b": caught_up, "cam-c": skewed}, [beat],
                    {"L1": Counts(100, 21), "L2": Counts(100, 45)}, {"broker": "127.0.0.1:1: refused"},
                    {"cam-a": {"drifting": True, "worst_z": -4.2, "at": NOW - 3, "message": "lighting / exposure "
                               "drift: mean_luma z=-4.2 in 14 of the last 20 frames"},
                     "cam-b": {"drifting": False, "worst_z": 0.3, "at": NOW - 3, "message": "lighting as in training"},
                     # drifting when it last sent, an hour ago: not an alarm now
                     "cam-d": {"drifting": True, "worst_z": -9.0, "at": NOW - 3600, "message": "stale"}})
    alarms = evaluate(seen, RULES, ClockRule())
    assert kinds(alarms) == [("inspection_behind", "cam-a", "critical"), ("store_unreachable", "broker", "critical"),
                             ("defect_rate", "L1", "critical"), ("clock_skew", "cam-c", "warning"),
                             ("drift", "cam-a", "warning")]
    by_kind = {a.kind: a for a in alarms}
    assert by_kind["inspection_behind"].value == pytest.approx(605.0)  # 600 s latency + 5 s since
    assert "10 min old, 40 frames waiting" in by_kind["inspection_behind"].text
    assert by_kind["defect_rate"].value == pytest.approx(0.21) and "limit 20.0%" in by_kind["defect_rate"].text
    assert "5 min behind" in by_kind["clock_skew"].text and by_kind["drift"].value == -4.2
    assert by_kind["drift"].text == \
        "Camera cam-a: lighting / exposure drift: mean_luma z=-4.2 in 14 of the last 20 frames"
    assert behind.backlog_s(NOW) == pytest.approx(605.0) and caught_up.backlog_s(NOW) == 0.0
    assert skewed.backlog_s(NOW) is None  # no worker reports its partition

    # Heartbeats: 11 s old is stalled (paused); past 30 s it may be gone; a worker's own stall reason counts;
    # a worker waiting for SQL makes SQL unreachable; a full image store is a warning.
    workers = [{"worker_id": "w-paused", "last_seen": NOW - 11},
               {"worker_id": "w-gone", "last_seen": NOW - 45},
               {"worker_id": "w-stuck", "last_seen": NOW - 1, "stalled": "stalled 45 s: oldest batch in flight"},
               {"worker_id": "w-sql", "last_seen": NOW - 1, "waiting_on": "sql 14 s"},
               {"worker_id": "w-full", "last_seen": NOW - 1, "image_store": {"full": True, "free_ratio": 0.004}},
               {"worker_id": "w-ok", "last_seen": NOW - 9.5}]
    alarms = evaluate(Observed(NOW, workers=workers), RULES, ClockRule())
    assert kinds(alarms) == [("worker_stalled", "w-gone", "critical"), ("worker_stalled", "w-paused", "critical"),
                             ("worker_stalled", "w-stuck", "critical"), ("store_unreachable", "sql", "critical"),
                             ("image_store_full", "w-full", "warning")]
    texts = {a.subject: a.text for a in alarms}
    assert texts["w-paused"].startswith("Worker w-paused stalled: no heartbeat for 11 s (paused or hung")
    assert "paused, hung or gone" in texts["w-gone"] and texts["w-stuck"].endswith("oldest batch in flight")
    assert texts["sql"] == "SQL database (the record) unreachable: worker w-sql waits for it (sql 14 s)"
    assert "0.4% free" in texts["w-full"]

    # No worker at all while a camera reported 20 s ago; a camera quiet for two hours is a stopped line.
    cams = {"cam-a": CameraView("cam-a", "L1", NOW - 20)}
    assert kinds(evaluate(Observed(NOW, cams), RULES, ClockRule())) == [("no_worker", "detector", "critical")]
    quiet = {"cam-a": CameraView("cam-a", "L1", NOW - 7200)}
    assert evaluate(Observed(NOW, quiet), RULES, ClockRule()) == []
    # Defect rates: the line's own limit, and too few frames to judge.
    rates = {"L2": Counts(100, 45), "L3": Counts(19, 19), "L1": Counts(100, 20)}
    assert evaluate(Observed(NOW, line_counts=rates), RULES, ClockRule()) == []


def test_camera_rate_and_latency_quantiles_of_the_last_minute():
    view = CameraView("cam-a", "L1", NOW, recent=[(NOW - i * 0.5, 0.1 + i / 1000) for i in range(120)])
    assert view.rate_per_s() == 2.0
    p50, p99 = view.latency_quantiles_s()
    assert p50 == pytest.approx(0.1595) and p99 == pytest.approx(0.21781)
    assert CameraView("cam-b", "L1", NOW).latency_quantiles_s() is None


def test_the_banner_is_green_red_or_grey():
    alarms = evaluate(Observed(NOW, workers=[{"worker_id": "w-1", "last_seen": NOW - 20}]), RULES, ClockRule())
    [red] = lines(alarms, NOW, 2.0, now=NOW + 1)
    assert "lw-alarm-critical" in red and "data-alarm='worker_stalled'" in red and "data-subject='w-1'" in red
    assert "lw-alarm-ok" in lines([], NOW, 2.0, now=NOW + 1)[0]
    assert "last evaluated 30 s ago" in lines([], NOW, 2.0, now=NOW + 30)[0]
    assert "<b>" not in lines(evaluate(Observed(NOW, workers=[{"worker_id": "<b>", "last_seen": 0}]), RULES,
                                       ClockRule()), NOW, 2.0, now=NOW)[0]


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.mark.services
def test_the_alarm_watch_observes_real_stores_and_sets_the_gauges(redis_service, tmp_path):
    url = f"redis://127.0.0.1:{redis_service.port}/6"
    client = redis.Redis.from_url(url)
    client.flushdb()
    closed = free_port()
    settings = Settings(redis={"url": url}, database={"url": f"sqlite:///{tmp_path / 'db.sqlite'}"},
                        kafka={"bootstrap_servers": f"127.0.0.1:{closed}"},
                        dashboard={"alarms": {"behind_after_s": 60, "defect_rate_max": 0.3}})
    try:
        now = time.time()
        writer = LiveStateWriter(client)
        # cam-a: ten minutes behind (40 frames waiting on its partition); every third frame a defect.
        writer.record([result("cam-a", i, now - 30 + i, 600, "defect" if i % 3 == 0 else "good")
                       for i in range(30)])
        writer.heartbeat("w-1", {"lag": {"lw.frames/0": 40}, "model_version": "v1"})
        watch = AlarmWatch(settings)
        alarms = watch.tick()
        assert kinds(alarms) == [("inspection_behind", "cam-a", "critical"),
                                 ("store_unreachable", "broker", "critical"), ("defect_rate", "L1", "critical")]
        backlog = gauge("linewatch_camera_backlog_seconds", camera_id="cam-a", line_id="L1")
        assert 600 < backlog < 660
        assert gauge("linewatch_camera_consumer_lag_frames", camera_id="cam-a", line_id="L1") == 40
        assert gauge("linewatch_camera_frames_per_second", camera_id="cam-a", line_id="L1") == 0.5  # 30 in 60 s
        assert gauge("linewatch_camera_latency_seconds", camera_id="cam-a", line_id="L1", quantile="0.99") == 600
        assert gauge("linewatch_line_defect_rate", line_id="L1") == pytest.approx(10 / 30)
        assert gauge("linewatch_line_defect_rate_limit", line_id="L1") == 0.3
        assert gauge("linewatch_store_reachable", store="broker") == 0
        assert gauge("linewatch_store_reachable", store="redis") == gauge("linewatch_store_reachable", store="sql") == 1
        assert gauge("linewatch_alarm_active", alarm="inspection_behind", subject="cam-a", severity="critical") == 1
        assert abs(gauge("linewatch_alarms_evaluated_timestamp_seconds") - time.time()) < 5

        # The worker falls silent (its heartbeat 12 s old): stalled. The backlog clears: its gauge goes to 0.
        beat = json.loads(client.hget("linewatch:workers", "w-1"))
        client.hset("linewatch:workers", "w-1", json.dumps({**beat, "last_seen": time.time() - 12, "lag": {}}))
        alarms = watch.tick()
        assert ("worker_stalled", "w-1", "critical") in kinds(alarms)
        assert ("inspection_behind", "cam-a", "critical") not in kinds(alarms)
        assert gauge("linewatch_alarm_active", alarm="inspection_behind", subject="cam-a", severity="critical") == 0
        assert gauge("linewatch_alarm_active", alarm="worker_stalled", subject="w-1", severity="critical") == 1
        assert 11 < gauge("linewatch_worker_heartbeat_age_seconds", worker_id="w-1") < 20
        assert gauge("linewatch_camera_backlog_seconds", camera_id="cam-a", line_id="L1") is None  # lag unknown

        # The worker leaves (a clean stop): its alarm's series goes with its heartbeat age, not kept at 0 forever;
        # cam-a, still in the live state, keeps its cleared alarm at 0.
        writer.worker_gone("w-1")
        alarms = watch.tick()
        assert not [a for a in alarms if a.subject == "w-1"]
        assert gauge("linewatch_alarm_active", alarm="worker_stalled", subject="w-1", severity="critical") is None
        assert gauge("linewatch_worker_heartbeat_age_seconds", worker_id="w-1") is None
        assert gauge("linewatch_alarm_active", alarm="inspection_behind", subject="cam-a", severity="critical") == 0
        exported = {s.labels["subject"] for m in REGISTRY.collect() if m.name == "linewatch_alarm_active"
                    for s in m.samples}
        assert "w-1" not in exported and {"cam-a", "broker"} <= exported
    finally:
        client.flushdb()
        client.close()
    # Redis away: one alarm for it, and nothing judged from a live state that cannot be read.
    gone = settings.model_copy(update={
        "redis": settings.redis.model_copy(update={"url": f"redis://127.0.0.1:{closed}/0"}),
        "kafka": settings.kafka.model_copy(update={"bootstrap_servers": ""})})
    alarms = AlarmWatch(gone).tick()
    assert kinds(alarms) == [("store_unreachable", "redis", "critical")]
    assert "ConnectionError" in alarms[0].text


# ---- deploy/: Prometheus alert rules and the Grafana dashboard on the same metrics ------------------------

PROMETHEUS = REPO / "deploy" / "prometheus"
GRAFANA = REPO / "deploy" / "grafana" / "linewatch-line.json"


def exported_metrics() -> set[str]:
    """Every sample name linewatch's services export (counters with ``_total``, histograms with their series)."""
    import linewatch.dashboard.telemetry  # noqa: F401 -- each module registers its metrics on import
    import linewatch.detector.stream.telemetry  # noqa: F401
    import linewatch.ingest.camera  # noqa: F401
    import linewatch.ingest.publisher  # noqa: F401
    import linewatch.trainer.telemetry  # noqa: F401

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",),
                "summary": ("_count", "_sum", "")}
    return {family.name + s for family in REGISTRY.collect() if family.name.startswith("linewatch_")
            for s in suffixes.get(family.type, ("",))}


def named_metrics(expr: str) -> set[str]:
    import re

    return set(re.findall(r"\blinewatch_[a-z0-9_]+", expr))


def promtool(*args: str) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool is not installed: run LINEWATCH_WITH_TESTS=1 scripts/install-system-deps.sh",
                    pytrace=False)
    return subprocess.run([tool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_the_alert_rules_and_their_unit_tests_pass():
    checked = promtool("check", "rules", "linewatch-alerts.yml")
    assert checked.returncode == 0 and "SUCCESS: 11 rules found" in checked.stdout, checked.stdout + checked.stderr
    config = promtool("check", "config", "prometheus.yml")
    assert config.returncode == 0, config.stdout + config.stderr
    tested = promtool("test", "rules", "linewatch-alerts.test.yml")
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_rules_and_dashboard_name_only_metrics_linewatch_exports_and_every_alarm_kind_pages():
    from linewatch.dashboard.alarms import KINDS

    exported = exported_metrics()
    rules = yaml.safe_load((PROMETHEUS / "linewatch-alerts.yml").read_text())
    exprs = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    named = set().union(*(named_metrics(e) for e in exprs))
    assert named and named <= exported, named - exported
    paged = {k for e in exprs for k in KINDS if f'alarm="{k}"' in e}
    assert paged == set(KINDS)
    dash = json.loads(GRAFANA.read_text())
    targets = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    named = set().union(*(named_metrics(e) for e in targets))
    assert named <= exported, named - exported
    assert {"linewatch_alarm_active", "linewatch_camera_backlog_seconds", "linewatch_camera_latency_seconds",
            "linewatch_worker_heartbeat_age_seconds", "linewatch_store_reachable"} <= named


def test_the_grafana_dashboard_round_trips_through_grafanas_own_types():
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    def dropped(ours, theirs, path="") -> list[str]:
        """Paths of ``ours`` that Grafana's types do not keep (a misspelt or unknown key), or changed."""
        if isinstance(ours, dict):
            return [p for k, v in ours.items()
                    for p in ([f"{path}/{k}"] if k not in theirs else dropped(v, theirs[k], f"{path}/{k}"))]
        if isinstance(ours, list):
            return [f"{path}: length"] * (len(ours) != len(theirs)) + \
                [p for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) for p in dropped(a, b, f"{path}[{i}]")]
        return [] if ours == theirs else [f"{path}: {ours!r} -> {theirs!r}"]

    def round_trip(data: dict) -> dict:
        return json.loads(json.dumps(Dashboard.from_json(data).to_json(), cls=JSONEncoder))

    dash = json.loads(GRAFANA.read_text())
    assert dropped(dash, round_trip(dash)) == []
    broken = json.loads(GRAFANA.read_text())
    broken["panels"][0]["gridpos"] = broken["panels"][0].pop("gridPos")  # the check sees a misspelt key
    assert dropped(broken, round_trip(broken)) == ["/panels[0]/gridpos"]
    # A dashboard Grafana can import: unique panel ids, refIds unique per panel, panels within the 24-column grid
    # and not overlapping, every query on the templated Prometheus data source.
    assert dash["uid"] and dash["schemaVersion"] >= 36
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"]) > 0
        assert all(t["datasource"]["uid"] == "${datasource}" and t["expr"] for t in p["targets"])
    [var] = dash["templating"]["list"]
    assert (var["name"], var["type"], var["query"]) == ("datasource", "datasource", "prometheus")


def test_a_per_line_defect_rate_limit_from_the_environment_is_read_and_not_called_misspelt(monkeypatch):
    """A mapping setting's keys are the user's (line ids): ``..._BY_LINE__LINE-1`` sets line-1's limit and is no
    misspelling; one level deeper is."""
    from linewatch.contracts.settings_check import unknown_settings

    name = "LINEWATCH_DASHBOARD__ALARMS__DEFECT_RATE_MAX_BY_LINE__LINE-1"
    deeper = "LINEWATCH_DASHBOARD__ALARMS__DEFECT_RATE_MAX_BY_LINE__LINE-1__X"
    assert unknown_settings({name: "0.1", deeper: "1", "LINEWATCH_DETECTOR__MAX_BACH": "8"}) == [
        deeper, "LINEWATCH_DETECTOR__MAX_BACH"]
    monkeypatch.setenv(name, "0.1")
    assert Settings().dashboard.alarms.defect_rate_max_by_line == {"line-1": 0.1}
