"""The dashboard in a real browser: Debian's headless Chromium (Playwright) against ``linewatch dashboard``
running as its own process on real Redis, SQLite and PostgreSQL, seeded with real bottle frames scored by
a real model through the worker's own storing code. Screenshots of each page go to test-artifacts/dashboard/.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
from prometheus import scrape, status
from sqlalchemy import select

from linewatch.cli.embedded import free_port
from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.live_state import LiveStateWriter
from linewatch.contracts.schema import Inspection, Label, TrainingJob
from linewatch.detector.model_files import ModelFileError
from linewatch.detector.scoring import Scorer
from linewatch.detector.stream.model_slot import ModelSlot

from dashboard_seed import WORKER_ID, CameraPlan, Seeded, register_model, reset_sql, seed
from datasets import bottle

pytestmark = pytest.mark.services

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "dashboard"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run"]
REDIS_DB = 3  # the pipeline tests flush db 0
UI_TIMEOUT_MS = 60_000
GALLERY_PAGE = 5


# ---- fixtures: browser, model, stores, the dashboard process ---------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("chromium is not installed: run LINEWATCH_WITH_BROWSER=1 scripts/install-system-deps.sh",
                    pytrace=False)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def scorer(quick_model) -> Scorer:
    return Scorer(quick_model.model_dir, "cpu")


def camera_plans() -> list[CameraPlan]:
    """Two lines, three cameras; each sees real good and real defective bottles."""
    test = bottle() / "test"
    good = sorted((test / "good").glob("*.png"))
    broken = sorted((test / "broken_large").glob("*.png"))
    contamination = sorted((test / "contamination").glob("*.png"))
    return [
        CameraPlan("cam-1", "line-1", good[0:6] + broken[0:4]),
        CameraPlan("cam-2", "line-1", good[6:14] + broken[4:6]),
        CameraPlan("cam-3", "line-2", good[14:17] + contamination[0:2]),
    ]


class Stores:
    """One test's SQL database (empty schema), Redis database and image store."""

    def __init__(self, database_url: str, redis_port: int, state_dir: Path):
        self.database_url = database_url
        self.redis_url = f"redis://127.0.0.1:{redis_port}/{REDIS_DB}"
        self.state_dir = state_dir
        self.engine = make_engine(database_url)
        migrate(self.engine)
        reset_sql(self.engine)
        self.redis = redis.Redis.from_url(self.redis_url)
        self.redis.flushdb()

    def seed(self, scorer: Scorer, model_dir: Path) -> Seeded:
        seeded = seed(self.engine, LiveStateWriter(self.redis), self.state_dir / "images", scorer, camera_plans())
        register_model(self.engine, model_dir, scorer.version)
        return seeded

    def inspection_id(self, camera_id: str, frame_id: int) -> int:
        with self.engine.connect() as conn:
            return conn.execute(select(Inspection.id).where(Inspection.camera_id == camera_id,
                                                            Inspection.frame_id == frame_id)).scalar_one()

    def labels(self) -> list:
        with self.engine.connect() as conn:
            return list(conn.execute(select(Label).order_by(Label.id)).all())

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()


@pytest.fixture
def sqlite_stores(tmp_path, redis_service) -> Iterator[Stores]:
    stores = Stores(f"sqlite:///{tmp_path / 'linewatch.db'}", redis_service.port, tmp_path / "state")
    yield stores
    stores.close()


class Dashboard:
    """``linewatch dashboard`` as a child process on a free port, pointed at ``stores``."""

    def __init__(self, stores: Stores, **settings_env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = stores.state_dir / f"dashboard-{self.port}.log"
        stores.state_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
        env.update(LINEWATCH_REDIS__URL=stores.redis_url, LINEWATCH_DATABASE__URL=stores.database_url,
                   LINEWATCH_STATE_DIR=str(stores.state_dir), LINEWATCH_DASHBOARD__REFRESH_S="1",
                   LINEWATCH_DATA_ROOT=str(bottle().parents[1]), **settings_env)
        self.env = env

    def __enter__(self) -> Dashboard:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "linewatch", "dashboard", "--port", str(self.port)],
                                         env=self.env, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         cwd=self.log.parent)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the dashboard exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as answer:
                    if answer.read().strip() == b"ok":
                        return self
            except OSError:
                pass
            time.sleep(0.3)
        self.__exit__()
        raise AssertionError(f"the dashboard did not answer in 120 s:\n{self.log_tail()}")

    def __exit__(self, *_exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:]) if self.log.exists() else ""


# ---- helpers ---------------------------------------------------------------------------------------------


def open_page(browser: Browser) -> Page:
    context = browser.new_context(viewport={"width": 1400, "height": 1800})
    page = context.new_page()
    page.set_default_timeout(UI_TIMEOUT_MS)
    return page


def metric(page: Page, label: str) -> Locator:
    """The value of the ``st.metric`` labelled exactly ``label``."""
    label_el = page.get_by_test_id("stMetricLabel").get_by_text(label, exact=True)
    return page.get_by_test_id("stMetric").filter(has=label_el).get_by_test_id("stMetricValue")


# The alarm banner is a fragment that reruns every dashboard.refresh_s (1 s here): on a loaded machine its own
# elements are stale most of the time. A page's run is over when nothing outside it is stale.
_STALE_OUTSIDE_BANNER = ("[data-stale='true']:not(.st-key-lw_alarms):not(.st-key-lw_alarms *)"
                         ":not(:has(.st-key-lw_alarms))")


def settled(page: Page) -> None:
    """Wait until the app's run is over: no element of the previous run is left on the page (the alarm banner's
    own refresh aside)."""
    page.wait_for_timeout(300)
    expect(page.locator(_STALE_OUTSIDE_BANNER)).to_have_count(0)


def button(page: Page, key: str) -> Locator:
    """The button of the widget with ``key`` (by role: Streamlit also draws a hidden copy to measure it)."""
    return page.locator(f".st-key-{key}").get_by_role("button")


def click(target: Locator) -> None:
    """Click ``target`` once the page shows exactly one of it."""
    expect(target).to_have_count(1)
    target.click()


def submit(page: Page, button: Locator, cleared: Locator, answered: Locator, tries: int = 3) -> None:
    """Click a ``clear_on_submit`` form's ``button`` until the server has taken the submit: the form's field
    ``cleared`` is empty (at the end of that run) or its answer ``answered`` is on the page. Once in CI a submit
    never reached the script: the fields kept their text and no run answered for 30 s, on a page whose banner reruns
    every second (cause not found in Streamlit's request coalescing, which keeps triggers). An operator clicks
    again; so does this, and only when nothing answered within 20 s."""
    for _ in range(tries):
        settled(page)
        click(button)
        deadline = time.monotonic() + 20  # the run that takes the submit may take seconds on a loaded machine
        while time.monotonic() < deadline:
            if cleared.input_value() == "" or answered.count():
                return
            page.wait_for_timeout(200)
    raise AssertionError(f"the form was submitted {tries} times and the server never answered")


def looked(page: Page) -> None:
    """Settle, then give the operator time to look: a click counts only on a frame that has been on screen for
    ``dashboard.review_min_view_s`` (0.5 s by default)."""
    settled(page)
    page.wait_for_timeout(700)


def current_button(page: Page, name: str) -> Locator:
    """The Good (``name`` = good) or Defect button of the frame shown first on the Review page."""
    return page.locator(f".st-key-lw_review_current [class*='st-key-lw_{name}_']").get_by_role("button")


REVIEW_ALL_KEPT = {"LINEWATCH_DASHBOARD__REVIEW_SAMPLE_EVERY": "1"}  # every kept frame is queued, band or not


def no_errors(page: Page) -> None:
    expect(page.get_by_test_id("stException")).to_have_count(0)
    expect(page.get_by_test_id("stAlertContentError")).to_have_count(0)


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_timeout(800)  # images and charts finish painting
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def goto(page: Page, url: str, heading: str) -> None:
    page.goto(url)
    # The first page a fresh Streamlit server renders imports the app: allow it the UI timeout, not 5 s.
    expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)


# ---- tests -----------------------------------------------------------------------------------------------


def test_pages_explain_empty_stores_then_the_live_page_shows_the_seeded_defect_rates(
        browser, scorer, quick_model, sqlite_stores):
    stores = sqlite_stores
    with Dashboard(stores, LINEWATCH_DASHBOARD__PAGE_SIZE=str(GALLERY_PAGE)) as dash:
        page = open_page(browser)
        goto(page, f"{dash.url}/defects", "Defects")
        expect(page.get_by_text("No camera has reported yet, so there are no defects to show.")).to_be_visible()
        no_errors(page)
        goto(page, f"{dash.url}/review", "Review")
        expect(page.get_by_text("Nothing awaits review.", exact=False)).to_be_visible()
        no_errors(page)
        goto(page, f"{dash.url}/models", "Models")
        expect(page.get_by_text("No model version is registered yet.", exact=False)).to_be_visible()
        no_errors(page)
        goto(page, dash.url, "Live")
        expect(page.get_by_text("No camera has reported yet.", exact=False)).to_be_visible()
        expect(page.get_by_text("No detector worker has sent a heartbeat.", exact=False)).to_be_visible()
        no_errors(page)
        screenshot(page, "live-empty")

        seeded = stores.seed(scorer, quick_model.model_dir)
        inspected, defects = seeded.counts()
        assert inspected == 25 and 0 < defects < inspected, "the seed needs both verdicts"
        # No reload: the live panel refreshes itself.
        for cam in ("cam-1", "cam-2", "cam-3"):
            expect(metric(page, f"{cam} defect rate")).to_have_text(seeded.rate_text(camera=cam), timeout=30_000)
            expect(metric(page, f"{cam} inspected")).to_have_text(str(seeded.counts(camera=cam)[0]))
        for line in ("line-1", "line-2"):
            expect(metric(page, f"{line} defect rate")).to_have_text(seeded.rate_text(line=line))
            expect(metric(page, f"{line} defects")).to_have_text(str(seeded.counts(line=line)[1]))
        # Each camera's latest frame with its heatmap overlay, a trend chart per line, the worker's health.
        for cam in ("cam-1", "cam-2", "cam-3"):
            expect(page.locator(f".st-key-lw_camera_{cam} [data-testid='stImage'] img")).to_have_count(1)
        expect(page.get_by_test_id("stVegaLiteChart")).to_have_count(2)
        expect(page.get_by_test_id("stVegaLiteChart").first.locator("canvas, svg").first).to_be_visible()
        expect(page.get_by_test_id("stTable").filter(has_text=WORKER_ID)).to_contain_text(scorer.version)
        # It keeps refreshing, in place: nothing fades while a refresh runs, and unchanged frames are not
        # fetched again.
        updated = page.get_by_text("refreshes every 1 s", exact=False)
        before = updated.inner_text()
        latest = page.locator(".st-key-lw_camera_cam-1 [data-testid='stImage'] img")
        src = latest.get_attribute("src")
        for _ in range(15):
            faded = page.locator("[data-stale='true']").evaluate_all(
                "els => els.filter(e => parseFloat(getComputedStyle(e).opacity) < 0.99).length")
            assert faded == 0
            page.wait_for_timeout(200)
        expect(updated).not_to_have_text(before)
        assert latest.get_attribute("src") == src
        # A worker whose next model did not load says so in its row and in a warning (field case c27).
        slot = ModelSlot(scorer)
        slot.announced("v9")
        slot.load_failed("v9", ModelFileError("student.safetensors: content does not match the SHA-256"))
        LiveStateWriter(stores.redis).heartbeat("w-behind", {
            "model_version": scorer.version, **slot.rollout_status(), "frames_per_s": 4.0, "inspected": 0,
            "dead_lettered": 0, "partitions": [], "lag": {}, "device": "cpu"})
        behind = f"on {scorer.version}, registry says v9"
        expect(page.get_by_test_id("stTable").filter(has_text="w-behind")).to_contain_text(behind)
        expect(page.get_by_text(f"Worker w-behind is {behind}. Loading it failed: v9: student.safetensors: content "
                                "does not match the SHA-256; retrying.")).to_be_visible()
        # A camera whose lighting drifted raises the drift alarm (field case c29; the state as a worker writes it).
        LiveStateWriter(stores.redis).drift({"cam-2": {
            "camera_id": "cam-2", "drifting": True, "since": time.time() - 60, "at": time.time(), "worst": "saturated",
            "worst_z": -34.7, "message": "lighting / exposure drift: saturated z=-34.7 in 20 of the last 20 frames"}})
        expect(page.get_by_text("Camera cam-2: lighting / exposure drift: saturated z=-34.7 in 20 of the last 20 "
                                "frames", exact=False).first).to_be_visible(timeout=30_000)  # the alarm banner
        no_errors(page)
        screenshot(page, "live")

        goto(page, f"{dash.url}/defects", "Defects")
        tiles = page.locator("[class*='st-key-lw_defect_']")
        assert defects > GALLERY_PAGE, "the gallery should need two pages"
        expect(tiles).to_have_count(GALLERY_PAGE)
        expect(tiles.first.locator("img")).to_be_visible()
        no_errors(page)
        screenshot(page, "defects")
        first_page = {c for t in tiles.all() for c in t.get_attribute("class").split() if c.startswith("st-key-")}
        click(button(page, "lw_defects_older"))
        expect(page.get_by_text("Page 2")).to_be_visible()
        expect(tiles).to_have_count(min(GALLERY_PAGE, defects - GALLERY_PAGE))
        second_page = {c for t in tiles.all() for c in t.get_attribute("class").split() if c.startswith("st-key-")}
        assert not first_page & second_page
        settled(page)
        click(button(page, "lw_defects_newer"))
        expect(tiles).to_have_count(GALLERY_PAGE)
        settled(page)
        click(tiles.first.get_by_role("button", name="Details"))
        dialog = page.get_by_role("dialog")
        expect(dialog.locator("img")).to_have_count(2)  # the original and its heatmap overlay
        expect(dialog.get_by_text(scorer.version)).to_be_visible()
        screenshot(page, "defect-detail")

        # The worker that was behind gives up v9 and follows the registry again: otherwise, once the rollout
        # window after the seed's activation is over, the Models page rightly shows it as a disagreement in red.
        LiveStateWriter(stores.redis).heartbeat("w-behind", {
            "model_version": scorer.version, **ModelSlot(scorer).rollout_status(), "frames_per_s": 4.0,
            "inspected": 0, "dead_lettered": 0, "partitions": [], "lag": {}, "device": "cpu"})
        goto(page, f"{dash.url}/models", "Models")
        expect(page.get_by_text(f"Active model: {scorer.version}", exact=False)).to_be_visible()
        no_errors(page)
        screenshot(page, "models")


@pytest.fixture(params=["sqlite", "postgresql"])
def any_stores(request, tmp_path, redis_service) -> Iterator[Stores]:
    url = f"sqlite:///{tmp_path / 'linewatch.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_server").url
    stores = Stores(url, redis_service.port, tmp_path / "state")
    yield stores
    stores.close()


def test_review_click_stores_the_operators_label_and_undo_revokes_it(browser, scorer, quick_model, any_stores):
    stores = any_stores
    seeded = stores.seed(scorer, quick_model.model_dir)
    kept = sorted(seeded.kept, key=lambda r: r.frame.captured_at)
    oldest = stores.inspection_id(kept[0].frame.camera_id, kept[0].frame.frame_id)
    metrics_port = free_port()
    with Dashboard(stores, LINEWATCH_DASHBOARD__METRICS_PORT=str(metrics_port), **REVIEW_ALL_KEPT) as dash:
        assert (status(metrics_port, "/healthz"), status(metrics_port, "/readyz")) == (200, 200)
        page = open_page(browser)
        goto(page, f"{dash.url}/review", "Review")
        expect(metric(page, "Awaiting review")).to_have_text(str(len(kept)))
        expect(metric(page, "Ready for retraining")).to_have_text("0")
        expect(page.locator("[class*='st-key-lw_good_']")).to_have_count(0)  # no name, no labelling
        page.get_by_label("Your name (needed to label)").fill("Maria Lopez")
        page.get_by_label("Your name (needed to label)").press("Enter")
        looked(page)

        before = dt.datetime.now(dt.UTC)
        click(current_button(page, "good"))  # oldest first, by default
        expect(page.get_by_text(f"Labelled frame {oldest} good as Maria Lopez", exact=False)).to_be_visible()
        settled(page)
        [row] = stores.labels()
        assert (row.inspection_id, row.label, row.operator, row.revoked_at) == (oldest, "good", "Maria Lopez", None)
        created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=dt.UTC)
        assert before - dt.timedelta(seconds=5) <= created <= dt.datetime.now(dt.UTC)
        expect(metric(page, "Ready for retraining")).to_have_text("1")
        expect(metric(page, "Awaiting review")).to_have_text(str(len(kept) - 1))

        click(button(page, "lw_undo"))
        expect(page.get_by_text("Undone", exact=False)).to_be_visible()
        settled(page)
        [row] = stores.labels()
        assert row.revoked_at is not None
        expect(metric(page, "Ready for retraining")).to_have_text("0")
        expect(metric(page, "Awaiting review")).to_have_text(str(len(kept)))

        # Keyboard: D labels the frame shown first (the same oldest frame, back in its place) as a defect.
        looked(page)
        page.get_by_role("heading", name="Review", exact=True).click()
        page.keyboard.press("d")
        expect(page.get_by_text(f"Labelled frame {oldest} defect", exact=False)).to_be_visible()
        settled(page)
        assert [(r.inspection_id, r.label, r.revoked_at is None) for r in stores.labels()][-1] == \
            (oldest, "defect", True)

        # Bulk: the frames shown that the model called good are labelled good in one action, after a confirmation;
        # the flagged ones stay (tests/test_review_page.py ticks them one by one).
        goods = [r for r in kept[1:] if r.verdict == "good"]
        flagged = len(kept) - 1 - len(goods)
        assert goods and flagged, "the seed needs both verdicts among the kept frames"
        click(page.get_by_role("button", name=f"Label {len(goods)} shown as good…"))
        looked(page)
        assert [r.label for r in stores.labels() if r.revoked_at is None] == ["defect"]  # nothing before "yes"
        click(page.get_by_role("button", name=f"Yes, label {len(goods)} frames good"))
        expect(metric(page, "Ready for retraining")).to_have_text(str(len(goods)))
        expect(metric(page, "Awaiting review")).to_have_text(str(flagged))
        bulk_rows = [r for r in stores.labels() if r.label == "good" and r.revoked_at is None]
        assert len(bulk_rows) == len(goods) and len({r.created_at for r in bulk_rows}) == 1
        assert {r.inspection_id for r in bulk_rows} == {stores.inspection_id(r.frame.camera_id, r.frame.frame_id)
                                                        for r in goods}
        assert {r.operator for r in bulk_rows} == {"Maria Lopez"}
        no_errors(page)
        screenshot(page, f"review-done-{stores.engine.dialect.name}")

        # The confirmed frames are what the trainer learns from: the operator asks for a retraining now.
        page.get_by_role("link", name="Models").click()
        expect(page.get_by_role("heading", name="Retraining", exact=True)).to_be_visible()
        click(page.get_by_role("button", name="Retrain now"))
        expect(page.get_by_text("queued for the trainer service", exact=False)).to_be_visible()
        with stores.engine.connect() as conn:
            jobs = conn.execute(select(TrainingJob)).all()
        assert [(j.status, j.trigger, j.requested_by, j.from_scratch) for j in jobs] == \
            [("queued", "manual", "Maria Lopez", False)]
        expect(page.get_by_role("cell", name="queued", exact=True)).to_be_visible()
        no_errors(page)

        metrics = scrape(metrics_port)
        assert metrics['linewatch_dashboard_labels_total{label="good"}'] == 1 + len(goods)  # one, then the bulk
        assert metrics['linewatch_dashboard_labels_total{label="defect"}'] == 1
        assert metrics["linewatch_dashboard_retrain_requests_total"] == 1
        assert metrics['linewatch_dashboard_page_views_total{page="review"}'] >= 1
        assert metrics["linewatch_dashboard_query_seconds_count"] > 10


def test_anonymous_viewers_cannot_label_when_operator_accounts_are_configured(
        browser, scorer, quick_model, sqlite_stores, tmp_path):
    accounts = tmp_path / "operators.toml"
    added = subprocess.run([sys.executable, "-m", "linewatch", "operator", "add", "alice", "--accounts",
                            str(accounts), "--password-stdin"], input="correct horse\n", capture_output=True,
                           text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    assert "correct horse" not in accounts.read_text() and "scrypt$" in accounts.read_text()
    assert accounts.stat().st_mode & 0o077 == 0

    stores = sqlite_stores
    seeded = stores.seed(scorer, quick_model.model_dir)
    oldest = min(seeded.kept, key=lambda r: r.frame.captured_at)
    Path(oldest.image_uri.removeprefix("file://")).unlink()  # a kept original gone from the disk
    with Dashboard(stores, LINEWATCH_DASHBOARD__ACCOUNTS_FILE=str(accounts), **REVIEW_ALL_KEPT) as dash:
        page = open_page(browser)
        goto(page, f"{dash.url}/review", "Review")
        expect(page.get_by_text("Sign in (sidebar) to label frames.", exact=False)).to_be_visible()
        current = page.locator(".st-key-lw_review_current")
        expect(current.locator("img")).to_have_count(1)  # anyone may look: the heatmap overlay ...
        expect(current.get_by_text("Image unavailable: file missing from the image store")).to_be_visible()
        expect(page.get_by_role("button", name="Good")).to_have_count(0)
        expect(page.get_by_role("button", name="Defect")).to_have_count(0)
        expect(page.get_by_role("button", name="Undo my last label")).to_have_count(0)
        expect(page.get_by_text("shown as good")).to_have_count(0)
        no_errors(page)
        screenshot(page, "review-anonymous")

        sidebar = page.get_by_test_id("stSidebar")
        sidebar.get_by_label("Operator").fill("alice")
        sidebar.get_by_label("Password", exact=True).fill("wrong password")
        click(sidebar.get_by_role("button", name="Sign in"))
        expect(page.get_by_text("Unknown operator or wrong password.")).to_be_visible()
        expect(current_button(page, "good")).to_have_count(0)

        sidebar.get_by_label("Operator").fill("alice")
        sidebar.get_by_label("Password", exact=True).fill("correct horse")
        click(sidebar.get_by_role("button", name="Sign in"))
        expect(sidebar.get_by_text("Signed in as alice")).to_be_visible()
        looked(page)
        expect(current_button(page, "good")).to_be_disabled()  # its kept image is gone: never offered as good
        click(current_button(page, "defect"))
        expect(page.get_by_text("defect as alice.", exact=False)).to_be_visible()
        [row] = stores.labels()
        assert (row.label, row.operator, row.revoked_at) == ("defect", "alice", None)
        assert row.inspection_id in {stores.inspection_id(r.frame.camera_id, r.frame.frame_id) for r in seeded.kept}
        screenshot(page, "review-signed-in")


# ---- the pieces without a browser ------------------------------------------------------------------------


def test_operator_passwords_are_stored_as_scrypt_hashes_and_checked(tmp_path):
    from linewatch.dashboard.accounts import (
        AccountsError,
        check_login,
        hash_password,
        load_accounts,
        remove_account,
        set_password,
        verify_password,
    )

    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$") and "correct horse" not in stored
    assert stored != hash_password("correct horse")  # salted
    assert verify_password("correct horse", stored) and not verify_password("correct hors", stored)
    assert not verify_password("correct horse", "scrypt$broken") and not verify_password("x", "md5$1$2$3$4$5")
    path = tmp_path / "operators.toml"
    assert set_password(path, "alice", "correct horse") and not set_password(path, "alice", "new password")
    accounts = load_accounts(path)
    assert check_login(accounts, "alice", "new password")
    assert not check_login(accounts, "alice", "correct horse") and not check_login(accounts, "bob", "new password")
    with pytest.raises(AccountsError):
        set_password(path, "../etc", "pw")
    assert remove_account(path, "alice") and load_accounts(path) == {}
    path.write_text("[operators.eve]\nrole = 'admin'\n")
    with pytest.raises(AccountsError, match="no password_hash"):
        load_accounts(path)


def test_the_shift_window_starts_at_the_running_shift_in_the_plants_time_zone():
    from linewatch.dashboard.windows import bucket_for, custom, preset, shift_start

    shifts = ["06:00", "14:00", "22:00"]
    berlin_0130 = dt.datetime(2026, 1, 15, 0, 30, tzinfo=dt.UTC)  # 01:30 in Berlin (UTC+1): night shift
    assert shift_start(berlin_0130, shifts, "Europe/Berlin") == dt.datetime(2026, 1, 14, 21, 0, tzinfo=dt.UTC)
    assert shift_start(dt.datetime(2026, 1, 15, 14, 0, tzinfo=dt.UTC), shifts, "UTC") == \
        dt.datetime(2026, 1, 15, 14, 0, tzinfo=dt.UTC)
    window = preset("Last 5 min", berlin_0130, shifts, "UTC")
    assert window.end - window.start == dt.timedelta(minutes=5) and window.bucket_s == 60
    assert bucket_for(dt.timedelta(hours=8)) == 300 and bucket_for(dt.timedelta(days=30)) == 3 * 3600
    with pytest.raises(ValueError):
        custom(dt.date(2026, 1, 2), dt.date(2026, 1, 1), dt.time(0), dt.time(0), "UTC")
