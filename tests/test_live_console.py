"""The Live console in a real browser (Playwright + Debian's Chromium, the fixtures of test_dashboard.py): a
backlog shows as the inspection-behind alarm with non-zero counts by processing time, and a paused (SIGSTOP)
real detector worker raises the stalled alarm in the banner within 30 s."""

from __future__ import annotations

import datetime as dt
import re
import signal
import threading
import time
from types import SimpleNamespace

import pytest
from playwright.sync_api import Page, expect
from prometheus import scrape
from test_dashboard import (  # noqa: F401 -- browser, scorer and sqlite_stores are fixtures used here
    Dashboard,
    browser,
    camera_plans,
    metric,
    no_errors,
    open_page,
    scorer,
    screenshot,
    sqlite_stores,
)

from linewatch.cli.embedded import free_port
from linewatch.contracts.live_state import LiveStateReader, LiveStateWriter
from linewatch.detector.stream.heartbeat import send_heartbeats

from dashboard_seed import WORKER_ID, register_model, seed
from datasets import bottle
from pipeline_harness import Pipeline

pytestmark = pytest.mark.services

BEHIND = dt.timedelta(minutes=10)
WAIT_MS = 30_000
LAG = 240  # frames waiting on the seed's partition, as the worker's heartbeat reports them


def goto(page: Page, url: str, heading: str) -> None:
    """Open ``url`` and wait for its heading (a loaded machine takes more than expect's 5 s for a first run)."""
    page.goto(url)
    expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible(timeout=WAIT_MS)


def figure(page: Page, camera: str, key: str):
    """One figure (rate, latency, backlog, lag) of a camera's tile on the Live page."""
    return page.locator(f".lw-flow[data-camera='{camera}'] [data-figure='{key}']")


def alarm(page: Page, kind: str, subject: str):
    return page.locator(f".st-key-lw_alarms .lw-alarm[data-alarm='{kind}'][data-subject='{subject}']")


def test_a_backlog_shows_the_inspection_behind_alarm_and_counts_by_processing_time(
        browser, scorer, quick_model, sqlite_stores):  # noqa: F811 -- the fixtures imported above
    stores = sqlite_stores
    stop = threading.Event()
    metrics_port = free_port()
    try:
        with Dashboard(stores, LINEWATCH_DASHBOARD__METRICS_PORT=str(metrics_port)) as dash:
            page = open_page(browser)
            goto(page, dash.url, "Live")
            page.get_by_role("radio", name="Last 5 min").click()
            expect(page.get_by_text("Last 5 min:", exact=False)).to_be_visible(timeout=WAIT_MS)
            # Every frame was captured (and appended to the topic) ten minutes ago and is inspected now: a worker
            # ten minutes behind, still working through 240 more frames, its heartbeat going on.
            seeded = seed(stores.engine, LiveStateWriter(stores.redis), stores.state_dir / "images", scorer,
                          camera_plans(), spacing_s=2.0, end=dt.datetime.now(dt.UTC) - BEHIND,
                          appended_at_capture=True)
            register_model(stores.engine, quick_model.model_dir, scorer.version)
            status = {"model_version": scorer.version, "frames_per_s": 4.2, "inspected": len(seeded.results),
                      "partitions": ["seed.frames/0"], "lag": {"seed.frames/0": LAG}, "device": "cpu"}
            threading.Thread(target=send_heartbeats, args=(LiveStateWriter(stores.redis), WORKER_ID,
                                                           lambda: status, stop, 1.0), daemon=True).start()
            # Counted when inspected: the last five minutes hold every seeded frame, captured ten minutes ago.
            for cam in ("cam-1", "cam-2", "cam-3"):
                inspected, _ = seeded.counts(camera=cam)
                expect(metric(page, f"{cam} inspected")).to_have_text(str(inspected), timeout=WAIT_MS)
                expect(metric(page, f"{cam} defect rate")).to_have_text(seeded.rate_text(camera=cam), timeout=WAIT_MS)
                # Rate and latency of the last minute (the seed wrote every frame just now): frames / 60 s, and
                # ten minutes from capture to record.
                expect(figure(page, cam, "rate")).to_have_text(f"{inspected / 60:.1f}/s", timeout=WAIT_MS)
                expect(figure(page, cam, "latency")).to_have_text(re.compile("1[01] min / 1[01] min"), timeout=WAIT_MS)
            expect(metric(page, "line-1 inspected")).to_have_text(str(seeded.counts(line="line-1")[0]), timeout=WAIT_MS)
            expect(page.get_by_text("No frames from line", exact=False)).to_have_count(0, timeout=WAIT_MS)
            # The banner: each camera ten minutes behind (its newest frame waited 10 min; 240 frames wait).
            for cam in ("cam-1", "cam-2", "cam-3"):
                behind = alarm(page, "inspection_behind", cam)
                expect(behind).to_be_visible(timeout=WAIT_MS)
                expect(behind).to_contain_text(f"Inspection behind on camera {cam}", timeout=WAIT_MS)
                expect(behind).to_contain_text(re.compile(f"1[01] min old, {LAG} frames waiting"), timeout=WAIT_MS)
                expect(figure(page, cam, "backlog")).to_have_text(re.compile("1[01] min"), timeout=WAIT_MS)
                expect(figure(page, cam, "lag")).to_have_text(f"{LAG} frames", timeout=WAIT_MS)
                newest = max((r for r in seeded.results if r.frame.camera_id == cam), key=lambda r: r.frame.frame_id)
                lamp = page.locator(f".lw-lamp[data-camera='{cam}']")
                verdict = "NG" if newest.verdict == "defect" else "OK"
                expect(lamp).to_have_attribute("data-verdict", verdict, timeout=WAIT_MS)
                expect(lamp).to_have_text(verdict, timeout=WAIT_MS)
                expect(page.locator(f".st-key-lw_camera_{cam}")).to_contain_text(re.compile("captured 1[01] min ago"),
                                                                                 timeout=WAIT_MS)
            expect(alarm(page, "worker_stalled", WORKER_ID)).to_have_count(0)  # it beats: behind, not stalled
            inspected, defects = seeded.counts(line="line-1")
            if defects / inspected > 0.2:  # the default limit, judged on at least 20 frames
                expect(alarm(page, "defect_rate", "line-1")).to_contain_text(
                    f"{defects / inspected:.1%} of {inspected} frames", timeout=WAIT_MS)
            no_errors(page)
            screenshot(page, "live-backlog")
            # Every page carries the banner.
            goto(page, f"{dash.url}/defects", "Defects")
            expect(alarm(page, "inspection_behind", "cam-1")).to_be_visible(timeout=WAIT_MS)
            metrics = scrape(metrics_port)
            key = 'linewatch_alarm_active{alarm="inspection_behind",severity="critical",subject="cam-1"}'
            assert metrics[key] == 1
            backlog = metrics['linewatch_camera_backlog_seconds{camera_id="cam-1",line_id="line-1"}']
            assert 600 <= backlog < 700
            assert metrics['linewatch_camera_consumer_lag_frames{camera_id="cam-1",line_id="line-1"}'] == LAG
    finally:
        stop.set()


def test_a_paused_worker_raises_the_stalled_alarm_within_30_s_and_clears_when_it_resumes(
        browser, apache_kafka, redis_url, tmp_path, quick_model):  # noqa: F811 -- the fixture imported above
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, f"sqlite:///{tmp_path / 'db.sqlite'}",
                 tmp_path / "state", quick_model.model_dir)
    try:
        worker = p.start_worker("w1")
        p.wait_for_workers(1)
        good = bottle() / "test" / "good"
        p.publish_folder(good, max_frames=4)
        p.wait_for_rows(4)
        [beat] = LiveStateReader(p.redis).workers()
        worker_id = beat["worker_id"]
        stores = SimpleNamespace(redis_url=redis_url, database_url=p.settings.database_url,
                                 state_dir=tmp_path / "state")
        with Dashboard(stores, LINEWATCH_KAFKA__BOOTSTRAP_SERVERS=apache_kafka.bootstrap_servers) as dash:
            page = open_page(browser)
            goto(page, dash.url, "Live")
            expect(page.locator(".st-key-lw_alarms .lw-alarm-ok")).to_be_visible(timeout=WAIT_MS)
            stalled = alarm(page, "worker_stalled", worker_id)
            expect(stalled).to_have_count(0, timeout=WAIT_MS)

            worker.send_signal(signal.SIGSTOP)
            paused_at = time.monotonic()
            try:
                expect(stalled).to_be_visible(timeout=WAIT_MS)
                raised_after = time.monotonic() - paused_at
                expect(stalled).to_contain_text(f"Worker {worker_id} stalled: no heartbeat for", timeout=WAIT_MS)
                screenshot(page, "live-worker-stalled")
                no_errors(page)
            finally:
                worker.send_signal(signal.SIGCONT)
            assert raised_after < 30, f"the stalled alarm took {raised_after:.1f} s"
            expect(stalled).to_have_count(0, timeout=WAIT_MS)
            expect(page.locator(".st-key-lw_alarms .lw-alarm-ok")).to_be_visible(timeout=WAIT_MS)
        print(f"stalled alarm shown {raised_after:.1f} s after SIGSTOP")
        assert p.stop_workers() == {"w1": 0}
    finally:
        p.close()
