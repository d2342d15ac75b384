"""The Review page in a real browser (Playwright + Chromium, the fixtures of test_dashboard.py): a double click
writes exactly one label, for the frame shown (field case c32); bulk good leaves out flagged frames unless ticked
and asks first; Good is not the red button; two operators never get the same frame."""

from __future__ import annotations

import re

import pytest
import test_dashboard as ui
from playwright.sync_api import Page, expect
from sqlalchemy import select

from linewatch.contracts.schema import ReviewClaim

pytestmark = pytest.mark.services

# the fixtures this module shares with test_dashboard.py
browser, scorer, sqlite_stores, any_stores = ui.browser, ui.scorer, ui.sqlite_stores, ui.any_stores

OPERATOR = "Maria Lopez"


@pytest.fixture(autouse=True)
def patient_expect():
    """Each rerun of the page after a click waits on SQL and on other sessions' load: expect() waits up to 30 s
    (Playwright's default is 5 s) in this module, and is put back after each test."""
    expect.set_options(timeout=30_000)
    yield
    expect.set_options(timeout=5_000)
PRIMARY_RED = "rgb(197, 57, 72)"  # the dashboard theme's primaryColor (#c53948): the Defect button


def sign_in_by_name(page: Page, name: str) -> None:
    page.get_by_label("Your name (needed to label)").fill(name)
    page.get_by_label("Your name (needed to label)").press("Enter")
    ui.looked(page)


def frames_on_page(page: Page) -> list[int]:
    """Inspection ids of the frames the page shows with their Good buttons, first the one shown first."""
    classes = page.locator("[class*='st-key-lw_good_']").evaluate_all("els => els.map(e => e.className)")
    ids = [int(m.group(1)) for c in classes if (m := re.search(r"st-key-lw_good_(\d+)", c))]
    return list(dict.fromkeys(ids))  # Streamlit may draw a hidden copy of a button to measure it


def current_frame(page: Page) -> int:
    return frames_on_page(page)[0]


PRESS = """async ([x, y, gap]) => {
    // One press = mousedown, mouseup, click on whatever is at (x, y) at that moment, as a mouse would.
    const press = () => {
        const target = document.elementFromPoint(x, y);
        const at = {bubbles: true, cancelable: true, composed: true, clientX: x, clientY: y, button: 0, view: window};
        for (const type of ["mousedown", "mouseup", "click"]) target.dispatchEvent(new MouseEvent(type, at));
        const key = target.closest("[class*='st-key-lw_']");
        return [performance.now(), key ? (key.className.match(/st-key-lw_\\w+/) || [""])[0] : ""];
    };
    const first = press();
    await new Promise(resolve => setTimeout(resolve, gap));
    return [first, press()];
}"""


def double_click(page: Page, gap_ms: int) -> tuple[float, str, str]:
    """Two presses ``gap_ms`` apart, timed in the page, on the spot of the Good button of the frame shown first;
    returns the gap the page measured (ms) and the keys of the buttons the two presses landed on."""
    # A button drawn again (a rerun that mounts it anew) is armed again for 0.5 s: press once it takes the pointer.
    expect(ui.current_button(page, "good")).to_have_css("pointer-events", "auto")
    box = ui.current_button(page, "good").bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    (t1, key1), (t2, key2) = page.evaluate(PRESS, [x, y, gap_ms])
    return t2 - t1, key1, key2


def label_rows(stores) -> list[tuple]:
    return [(r.inspection_id, r.label, r.operator) for r in stores.labels() if r.revoked_at is None]


def test_c32_two_clicks_on_good_150_and_250_ms_apart_write_one_label_for_the_frame_shown(
        browser, scorer, quick_model, any_stores):
    stores = any_stores
    stores.seed(scorer, quick_model.model_dir)
    with ui.Dashboard(stores, **ui.REVIEW_ALL_KEPT) as dash:
        page = ui.open_page(browser)
        ui.goto(page, f"{dash.url}/review", "Review")
        sign_in_by_name(page, OPERATOR)
        labelled = []
        for gap_ms in (150, 250):
            shown = current_frame(page)
            measured, hit1, hit2 = double_click(page, gap_ms)
            print(f"c32: presses {measured:.0f} ms apart on frame {shown}: {hit1}, then {hit2}")
            assert hit1 == f"st-key-lw_good_{shown}"
            # The browser's own guard: the next frame's buttons ignore the pointer for 0.5 s after they appear,
            # however late the server hears of the click. Press 2 lands on the same button or on nothing.
            assert not re.fullmatch(r"st-key-lw_(good|defect)_\d+", hit2) or hit2 == hit1, hit2
            assert measured >= gap_ms - 5, measured  # a timer in a busy page may run late, never early
            labelled.append((shown, "good", OPERATOR))
            ui.settled(page)
            page.wait_for_timeout(1_000)  # a late rerun would show up here
            assert label_rows(stores) == labelled, f"gap {measured:.0f} ms"
            assert current_frame(page) != shown  # the next frame is up, unlabelled
            expect(page.get_by_text(f"Labelled frame {current_frame(page)}", exact=False)).to_have_count(0)
            ui.no_errors(page)
            ui.looked(page)
        ui.screenshot(page, f"review-double-click-{stores.engine.dialect.name}")


def test_a_click_on_a_frame_that_just_took_the_place_of_the_clicked_one_labels_nothing(
        browser, scorer, quick_model, sqlite_stores):
    stores = sqlite_stores
    stores.seed(scorer, quick_model.model_dir)
    with ui.Dashboard(stores, LINEWATCH_DASHBOARD__REVIEW_MIN_VIEW_S="3", **ui.REVIEW_ALL_KEPT) as dash:
        page = ui.open_page(browser)
        ui.goto(page, f"{dash.url}/review", "Review")
        sign_in_by_name(page, OPERATOR)
        page.wait_for_timeout(3_000)
        first = current_frame(page)
        ui.click(ui.current_button(page, "good"))
        expect(page.get_by_text(f"Labelled frame {first} good", exact=False)).to_be_visible()
        expect(page.locator(f".st-key-lw_review_current .st-key-lw_good_{first}")).to_have_count(0)  # replaced
        second = current_frame(page)
        # At once: the frame has not been there for 3 s. A mouse cannot click yet (the browser's guard: the
        # button ignores the pointer); a click event sent to the button itself tests the server's guard.
        expect(ui.current_button(page, "good")).to_have_css("pointer-events", "none")
        ui.current_button(page, "good").dispatch_event("click")
        # refused: on screen for less than 3 s, or not yet settled there (the run drawing it was still going)
        expect(page.get_by_text(re.compile(f"Nothing labelled: frame {second} (had been on screen there for only|"
                                           "was not settled in that place)"))).to_be_visible()
        assert label_rows(stores) == [(first, "good", OPERATOR)]
        page.wait_for_timeout(3_000)  # looked at long enough: now the click counts
        ui.click(ui.current_button(page, "good"))
        expect(page.get_by_text(f"Labelled frame {second} good", exact=False)).to_be_visible()
        assert label_rows(stores) == [(first, "good", OPERATOR), (second, "good", OPERATOR)]
        # Undo clicked twice in quick succession takes back one action, not two.
        ui.looked(page)
        ui.button(page, "lw_undo").dblclick()
        ui.settled(page)
        page.wait_for_timeout(500)
        assert label_rows(stores) == [(first, "good", OPERATOR)]


def test_bulk_good_leaves_out_flagged_frames_unless_ticked_asks_first_and_good_is_not_red(
        browser, scorer, quick_model, sqlite_stores):
    stores = sqlite_stores
    seeded = stores.seed(scorer, quick_model.model_dir)
    ids = {stores.inspection_id(r.frame.camera_id, r.frame.frame_id): r for r in seeded.kept}
    goods = sorted(i for i, r in ids.items() if r.verdict == "good")
    flagged = sorted(i for i, r in ids.items() if r.verdict == "defect")
    assert len(flagged) >= 2 and goods
    with ui.Dashboard(stores, **ui.REVIEW_ALL_KEPT) as dash:
        page = ui.open_page(browser)
        ui.goto(page, f"{dash.url}/review", "Review")
        sign_in_by_name(page, OPERATOR)
        assert sorted(frames_on_page(page)) == sorted(ids)
        # Defect is the red (primary) button; Good is green on a light background, never red.
        background = "els => els.map(e => getComputedStyle(e).backgroundColor)"
        defect_bg = page.locator("[class*='st-key-lw_defect_'] button").evaluate_all(background)
        good_bg = page.locator("[class*='st-key-lw_good_'] button").evaluate_all(background)
        assert set(defect_bg) == {PRIMARY_RED} and set(good_bg) == {"rgb(230, 244, 234)"}

        bulk = page.locator(".st-key-lw_bulk_good").get_by_role("button")
        expect(bulk).to_have_text(re.compile(f"Label {len(goods)} shown as good"))
        expect(page.get_by_text(f"{len(flagged)} frame(s) the model flagged are left out", exact=False)) \
            .to_be_visible()
        ticked = flagged[-1]
        page.locator(f".st-key-lw_pick_{ticked}").get_by_text("Include in bulk good").click()
        expect(bulk).to_have_text(re.compile(f"Label {len(goods) + 1} shown as good"))
        ui.click(bulk)
        confirm = page.locator(".st-key-lw_bulk_confirm")
        expect(confirm).to_contain_text(f"Label these {len(goods) + 1} frames good as {OPERATOR}?")
        assert label_rows(stores) == []  # asking stores nothing
        ui.looked(page)
        ui.click(confirm.get_by_role("button", name="Cancel"))
        expect(page.get_by_text("Bulk label cancelled: nothing stored.")).to_be_visible()
        assert label_rows(stores) == []
        ui.click(bulk)
        ui.looked(page)
        ui.click(page.get_by_role("button", name=f"Yes, label {len(goods) + 1} frames good"))
        expect(page.get_by_text(f"Labelled {len(goods) + 1} frames good as {OPERATOR}", exact=False)) \
            .to_be_visible()
        assert sorted(label_rows(stores)) == sorted((i, "good", OPERATOR) for i in [*goods, ticked])
        ui.settled(page)
        assert sorted(frames_on_page(page)) == flagged[:-1]  # the flagged frames not ticked still wait
        ui.no_errors(page)
        ui.screenshot(page, "review-bulk")


def test_two_operators_never_get_the_same_frame_and_can_order_by_uncertainty(
        browser, scorer, quick_model, sqlite_stores):
    stores = sqlite_stores
    seeded = stores.seed(scorer, quick_model.model_dir)
    kept = {stores.inspection_id(r.frame.camera_id, r.frame.frame_id): r for r in seeded.kept}
    oldest_first = sorted(kept, key=lambda i: (kept[i].frame.captured_at, i))
    with ui.Dashboard(stores, LINEWATCH_DASHBOARD__PAGE_SIZE="3", **ui.REVIEW_ALL_KEPT) as dash:
        maria, olek = ui.open_page(browser), ui.open_page(browser)
        ui.goto(maria, f"{dash.url}/review", "Review")
        sign_in_by_name(maria, "maria")
        assert frames_on_page(maria) == oldest_first[:3]
        ui.goto(olek, f"{dash.url}/review", "Review")
        sign_in_by_name(olek, "olek")
        assert frames_on_page(olek) == oldest_first[3:6]  # not maria's open frames
        expect(ui.metric(olek, "Awaiting review")).to_have_text(str(len(kept) - 3))
        with stores.engine.connect() as conn:
            claims = dict(conn.execute(select(ReviewClaim.inspection_id, ReviewClaim.operator)).all())
        assert claims == {**dict.fromkeys(oldest_first[:3], "maria"), **dict.fromkeys(oldest_first[3:6], "olek")}
        # Maria reorders: her open frames stay hers and on her page, now closest to the threshold first.
        maria.get_by_text("Most uncertain first").click()
        ui.looked(maria)

        def distance(i: int) -> float:
            s = kept[i].normalized_score
            return s if s >= 1 else 1 / s

        assert frames_on_page(maria) == sorted(oldest_first[:3], key=lambda i: (distance(i), i))
        ui.no_errors(maria)
        ui.no_errors(olek)
