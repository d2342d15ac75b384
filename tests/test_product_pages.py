"""The dashboard per product in a real browser (Playwright + Chromium, the fixtures of test_dashboard.py) on a real
SQLite record and Redis: the sidebar's product selector narrows the Live page's counts and the Models page's
versions to the chosen product (and keeps the choice across pages in the URL), and an engineer records a changeover
from the Cameras page, which lands in ``camera_products`` with the engineer's name and shows in the camera's
history."""

from __future__ import annotations

import datetime as dt

import pytest
import test_dashboard as ui
from playwright.sync_api import Page, expect
from test_models_page import sign_in, write_accounts
from test_product_dashboard import T0, _row, _version

from linewatch.contracts.changeovers import changeovers
from linewatch.contracts.schema import Camera, Inspection, ModelVersion

pytestmark = pytest.mark.services

browser, sqlite_stores = ui.browser, ui.sqlite_stores  # the fixtures this module shares with test_dashboard.py


def _seed(engine) -> None:
    """cam-1 (line L1): 12 bottle frames (4 defects), then 8 magnetic_tile (2); cam-2 (L1): 6 default (2), all
    processed in the last few minutes; bottle v1 retired and v2 active, magnetic_tile v1 active."""
    now = dt.datetime.now(dt.UTC)
    rows = [_row("cam-1", "bottle", i, (1.1, 0.5, 0.9, 2.0)[i % 4] if i <= 8 else 0.3) for i in range(1, 13)]
    rows += [_row("cam-1", "magnetic_tile", i, (0.85, 0.2, 1.5, 0.1)[i % 4]) for i in range(13, 21)]
    rows += [_row("cam-2", "default", i, (0.4, 3.0, 0.6)[i % 3]) for i in range(1, 7)]
    for r in rows:  # minutes ago instead of the fixed day of the query tests: the Live page's last hour
        r["captured_at"] = now - dt.timedelta(minutes=5) + (r["captured_at"] - T0)
        r["processed_at"] = r["captured_at"] + dt.timedelta(seconds=1)
    with engine.begin() as conn:
        conn.execute(Inspection.__table__.insert(), rows)
        conn.execute(Camera.__table__.insert(), [{"camera_id": c, "line_id": "L1", "first_seen": now,
                                                  "last_seen": now} for c in ("cam-1", "cam-2")])
        conn.execute(ModelVersion.__table__.insert(), [
            _version("bottle/v1", "bottle", 1, "retired", now - dt.timedelta(days=1)),
            _version("bottle/v2", "bottle", 2, "active", now - dt.timedelta(hours=1)),
            _version("magnetic_tile/v1", "magnetic_tile", 1, "active", now - dt.timedelta(hours=1))])


def choose(page: Page, label: str, option: str, where=None) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    box = (where or page).get_by_test_id("stSelectbox").filter(has=page.get_by_text(label, exact=True))
    ui.click(box)
    ui.click(page.get_by_role("option", name=option, exact=True))
    ui.settled(page)


def test_the_product_selector_narrows_counts_and_models_and_an_engineer_records_a_changeover(
        browser, sqlite_stores, tmp_path):
    stores = sqlite_stores
    _seed(stores.engine)
    accounts = tmp_path / "operators.toml"
    write_accounts(accounts, {"erin": "engineer"})
    with ui.Dashboard(stores, LINEWATCH_DASHBOARD__ACCOUNTS_FILE=str(accounts),
                      LINEWATCH_KAFKA__BOOTSTRAP_SERVERS="") as dash:
        page = ui.open_page(browser)
        ui.goto(page, dash.url, "Live")
        sidebar = page.get_by_test_id("stSidebar")
        # Three products known: "default" first; its counts are cam-2's alone (from SQL: Redis counts every product).
        expect(ui.metric(page, "L1 inspected")).to_have_text("6")
        choose(page, "Product", "bottle", sidebar)
        expect(ui.metric(page, "L1 inspected")).to_have_text("12")
        expect(ui.metric(page, "L1 defects")).to_have_text("4")
        expect(ui.metric(page, "cam-2 inspected")).to_have_text("0")
        assert "product=bottle" in page.url
        ui.screenshot(page, "products-live-bottle")

        # The choice travels with the page switch.
        ui.click(sidebar.get_by_test_id("stSidebarNavLink").filter(has_text="Models"))
        expect(page.get_by_role("heading", name="Models", exact=True)).to_be_visible()
        expect(page.get_by_text("Active model: bottle/v2", exact=False)).to_be_visible()
        versions = page.get_by_test_id("stTable").filter(has_text="bottle/v1")
        expect(versions).to_contain_text("bottle/v2")
        expect(page.get_by_text("magnetic_tile/v1")).to_have_count(0)
        choose(page, "Product", "all products", sidebar)
        expect(page.locator(".st-key-lw_models_of_magnetic_tile")).to_contain_text("magnetic_tile/v1")
        expect(page.locator(".st-key-lw_models_of_bottle")).to_contain_text("bottle/v2")
        ui.no_errors(page)

        ui.click(sidebar.get_by_test_id("stSidebarNavLink").filter(has_text="Cameras"))
        expect(page.get_by_role("heading", name="Cameras", exact=True)).to_be_visible()
        expect(page.get_by_text("Recording a changeover needs an engineer's sign-in", exact=False)).to_be_visible()
        sign_in(page, "erin")
        form = page.locator(".st-key-lw_changeover")
        choose(page, "Camera", "cam-1", form)
        choose(page, "Product from now on", "magnetic_tile", form)
        ui.click(form.get_by_role("button", name="Record changeover"))
        expect(page.get_by_text("Camera cam-1 shows magnetic_tile from", exact=False)).to_be_visible()
        history = page.locator(".st-key-lw_changeovers_cam-1")
        expect(history).to_contain_text("magnetic_tile")
        expect(history).to_contain_text("erin")
        ui.no_errors(page)
        ui.screenshot(page, "products-cameras-changeover")
    (row,) = changeovers(stores.engine)
    assert (row.camera_id, row.product, row.set_by) == ("cam-1", "magnetic_tile", "erin")
    assert dt.datetime.now(dt.UTC) - row.since < dt.timedelta(minutes=5)
