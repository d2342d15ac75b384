"""Signing in to the dashboard with the accounts file, in a real browser (Playwright + Chromium, the fixtures of
test_dashboard.py): a viewer cannot label, not even by a click the page no longer offers; a sign-in survives a
reload (a signed cookie) and a tampered or expired cookie signs nobody in; signing out gives the operator's open
review frames to the next operator at once. The pieces without a browser follow."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import pytest
import test_dashboard as ui
import test_deploy
from playwright.sync_api import Page, expect
from sqlalchemy import select
from test_review_page import frames_on_page

from linewatch.contracts.schema import ReviewClaim
from linewatch.contracts.settings import Settings
from linewatch.dashboard import session_cookie
from linewatch.dashboard.accounts import Account, AccountsError, load_accounts, set_password
from linewatch.dashboard.auth import Operator, may, oidc_role

# the fixtures this module shares with test_dashboard.py
browser, scorer, sqlite_stores = ui.browser, ui.scorer, ui.sqlite_stores
compose = test_deploy.compose  # deploy/compose.yaml as docker-compose resolves it

SECRET = "0123456789abcdef0123456789abcdef-test-only"
PASSWORDS = {"alice": "alice's long password", "bob": "bob's long password!", "carol": "carol's long password",
             "vic": "vic's long password"}


@pytest.fixture(autouse=True)
def patient_expect():
    """A rerun after a click waits on SQL and on other sessions' load: expect() waits up to 30 s here."""
    expect.set_options(timeout=30_000)
    yield
    expect.set_options(timeout=5_000)


@pytest.fixture
def accounts(tmp_path):
    path = tmp_path / "operators.toml"
    for name, role in (("alice", "operator"), ("bob", "operator"), ("carol", "operator"), ("vic", "viewer")):
        set_password(path, name, PASSWORDS[name], role)
    return path


def dashboard(stores, accounts, **env: str) -> ui.Dashboard:
    return ui.Dashboard(stores, LINEWATCH_DASHBOARD__ACCOUNTS_FILE=str(accounts),
                        LINEWATCH_DASHBOARD__COOKIE_SECRET=SECRET, **ui.REVIEW_ALL_KEPT, **env)


def sign_in(page: Page, name: str) -> None:
    """Fill the form once the page's run is over (a run still drawing the sidebar may replace the form and drop
    what was typed), then wait until the sidebar says who is signed in."""
    ui.settled(page)
    sidebar = page.get_by_test_id("stSidebar")
    for label, value in (("Operator", name), ("Password", PASSWORDS[name])):
        field = sidebar.get_by_label(label, exact=True)
        field.fill(value)
        expect(field).to_have_value(value)
    ui.click(sidebar.get_by_role("button", name="Sign in"))
    expect(sidebar.get_by_text(f"Signed in as {name}")).to_be_visible()
    ui.looked(page)


def session_cookies(page: Page) -> list[dict]:
    return [c for c in page.context.cookies() if c["name"] == session_cookie.COOKIE]


def claims(stores) -> dict[int, str]:
    with stores.engine.connect() as conn:
        return dict(conn.execute(select(ReviewClaim.inspection_id, ReviewClaim.operator)).all())


def oldest_first(stores, seeded) -> list[int]:
    kept = {stores.inspection_id(r.frame.camera_id, r.frame.frame_id): r for r in seeded.kept}
    return sorted(kept, key=lambda i: (kept[i].frame.captured_at, i))


def test_a_viewer_cannot_label_and_a_click_after_a_demotion_stores_nothing(
        browser, scorer, quick_model, sqlite_stores, accounts):
    stores = sqlite_stores
    stores.seed(scorer, quick_model.model_dir)
    with dashboard(stores, accounts) as dash:
        viewer = ui.open_page(browser)
        ui.goto(viewer, f"{dash.url}/review", "Review")
        sign_in(viewer, "vic")
        expect(viewer.get_by_test_id("stSidebar").get_by_text("Signed in as vic (viewer)")).to_be_visible()
        expect(viewer.get_by_text("a viewer: viewers may look but not label", exact=False)).to_be_visible()
        expect(viewer.locator(".st-key-lw_review_current img")).to_have_count(2)  # the frame is shown ...
        for key in ("lw_good_", "lw_defect_", "lw_pick_", "lw_undo", "lw_bulk_good"):  # ... without any control
            expect(viewer.locator(f"[class*='st-key-{key}']")).to_have_count(0)
        assert claims(stores) == {}  # a viewer holds no frames: they stay free for the operators
        ui.no_errors(viewer)
        ui.screenshot(viewer, "review-viewer")

        # Alice, an operator, has the buttons; an engineer makes her a viewer while her page is open. Her click
        # on the button still drawn (a click event sent to it) is refused by the server: nothing is stored.
        alice = ui.open_page(browser)
        ui.goto(alice, f"{dash.url}/review", "Review")
        sign_in(alice, "alice")
        frame = frames_on_page(alice)[0]
        demoted = subprocess.run([sys.executable, "-m", "linewatch", "operator", "role", "alice", "viewer",
                                  "--accounts", str(accounts)], capture_output=True, text=True, timeout=60)
        assert demoted.returncode == 0, demoted.stderr
        assert demoted.stdout.strip() == f"operator alice is now viewer in {accounts}"
        ui.current_button(alice, "defect").dispatch_event("click")
        expect(alice.get_by_text("Nothing labelled: alice is a viewer, and viewers cannot label.")).to_be_visible()
        ui.settled(alice)
        assert stores.labels() == []
        expect(alice.locator("[class*='st-key-lw_defect_']")).to_have_count(0)
        assert frame not in claims(stores) or claims(stores)[frame] == "alice"  # released at her claim's end
        ui.no_errors(viewer)


def test_a_sign_in_survives_a_reload_and_a_tampered_or_expired_cookie_signs_nobody_in(
        browser, scorer, quick_model, sqlite_stores, accounts):
    stores = sqlite_stores
    stores.seed(scorer, quick_model.model_dir)
    with dashboard(stores, accounts) as dash:
        page = ui.open_page(browser)
        ui.goto(page, f"{dash.url}/review", "Review")
        signed_at = time.time()
        sign_in(page, "alice")
        deadline = time.monotonic() + 10
        while not session_cookies(page) and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        [cookie] = session_cookies(page)
        assert (cookie["sameSite"], cookie["path"], cookie["httpOnly"]) == ("Strict", "/", False)
        assert abs(cookie["expires"] - (signed_at + 12 * 3600)) < 60  # dashboard.session_hours = 12
        name, issued = session_cookie.verify(cookie["value"], load_accounts(accounts), SECRET.encode(), 12 * 3600)
        assert name == "alice" and abs(issued - signed_at) < 60

        page.reload()
        ui.goto(page, f"{dash.url}/review", "Review")
        expect(page.get_by_test_id("stSidebar").get_by_text("Signed in as alice (operator)")).to_be_visible()
        expect(ui.current_button(page, "defect")).to_have_count(1)

        # Tampered: bob's name in the payload under alice's signature. Expired: alice's, issued 13 h ago.
        payload = json.loads(session_cookie._unb64(cookie["value"].split(".")[0]))
        forged = session_cookie._b64(json.dumps({**payload, "n": "bob"}).encode()) + "." + \
            cookie["value"].split(".")[1]
        expired = session_cookie.issue("alice", load_accounts(accounts)["alice"], SECRET.encode(),
                                       now=time.time() - 13 * 3600)
        for value, reason in ((forged, re.escape("its signature does not match (changed, or signed with another "
                                                 "key)")),
                              (expired, r"it expired (60|61|62) min ago")):  # 13 h - 12 h, and a slow page
            other = ui.open_page(browser)
            other.context.add_cookies([{"name": session_cookie.COOKIE, "value": value, "url": dash.url}])
            ui.goto(other, f"{dash.url}/review", "Review")
            expect(other.get_by_text(re.compile(rf"Your earlier sign-in was not accepted \({reason}\)"))) \
                .to_be_visible()
            expect(other.get_by_text("Sign in (sidebar) to label frames.", exact=False)).to_be_visible()
            expect(other.locator("[class*='st-key-lw_defect_']")).to_have_count(0)
            deadline = time.monotonic() + 10
            while session_cookies(other) and time.monotonic() < deadline:  # the refused cookie is deleted
                other.wait_for_timeout(200)
            assert session_cookies(other) == []
            other.context.close()

        # Alice changes her password: a wrong current one changes nothing; then the old cookie signs nobody in,
        # her page open in a second browser is signed out at its next run, and this browser holds a new cookie.
        second = ui.open_page(browser)
        second.context.add_cookies([{"name": session_cookie.COOKIE, "value": cookie["value"], "url": dash.url}])
        ui.goto(second, f"{dash.url}/review", "Review")
        expect(second.get_by_test_id("stSidebar").get_by_text("Signed in as alice (operator)")).to_be_visible()
        sidebar = page.get_by_test_id("stSidebar")
        new_password = "alice's new long password"
        for current in ("not alice's password", PASSWORDS["alice"]):
            ui.settled(page)
            if not sidebar.get_by_label("Current password").is_visible():
                ui.click(sidebar.get_by_text("Change password", exact=True).first)
            for label, value in (("Current password", current), ("New password", new_password),
                                 ("New password again", new_password)):
                sidebar.get_by_label(label, exact=True).fill(value)
            answer = "Password not changed" if current != PASSWORDS["alice"] else "Password changed."
            ui.submit(page, sidebar.get_by_role("button", name="Change password"),
                      sidebar.get_by_label("Current password", exact=True), sidebar.get_by_text(answer))
            if current != PASSWORDS["alice"]:
                expect(sidebar.get_by_text("Password not changed: the current password is wrong")).to_be_visible()
                session_cookie.verify(cookie["value"], load_accounts(accounts), SECRET.encode(), 12 * 3600)
        expect(sidebar.get_by_text("Password changed.", exact=False)).to_be_visible()
        ui.settled(second)
        second.get_by_text("Most uncertain first").click()  # any full run of her open page
        expect(second.get_by_text("Your password was changed since you signed in: sign in again.")).to_be_visible()
        expect(second.get_by_test_id("stSidebar").get_by_role("button", name="Sign in")).to_be_visible()
        second.context.close()
        with pytest.raises(session_cookie.CookieRefused, match="the password of 'alice' changed since"):
            session_cookie.verify(cookie["value"], load_accounts(accounts), SECRET.encode(), 12 * 3600)
        deadline = time.monotonic() + 10
        while [c["value"] for c in session_cookies(page)] in ([], [cookie["value"]]) and time.monotonic() < deadline:
            page.wait_for_timeout(200)
        [renewed] = session_cookies(page)
        assert session_cookie.verify(renewed["value"], load_accounts(accounts), SECRET.encode(), 12 * 3600)[0] \
            == "alice"
        expect(sidebar.get_by_text("Signed in as alice (operator)")).to_be_visible()
        assert stores.labels() == []
        ui.no_errors(page)


def test_sign_out_gives_the_operators_frames_to_the_next_operator_at_once(
        browser, scorer, quick_model, sqlite_stores, accounts):
    stores = sqlite_stores
    order = oldest_first(stores, stores.seed(scorer, quick_model.model_dir))
    with dashboard(stores, accounts, LINEWATCH_DASHBOARD__PAGE_SIZE="3") as dash:
        alice, bob = ui.open_page(browser), ui.open_page(browser)
        ui.goto(alice, f"{dash.url}/review", "Review")
        sign_in(alice, "alice")
        assert frames_on_page(alice) == order[:3]
        ui.goto(bob, f"{dash.url}/review", "Review")
        sign_in(bob, "bob")
        assert frames_on_page(bob) == order[3:6]
        assert claims(stores) == {**dict.fromkeys(order[:3], "alice"), **dict.fromkeys(order[3:6], "bob")}

        signed_out_at = time.monotonic()
        ui.click(ui.button(alice, "lw_logout"))
        expect(alice.get_by_test_id("stSidebar").get_by_role("button", name="Sign in")).to_be_visible()
        assert claims(stores) == dict.fromkeys(order[3:6], "bob")  # alice's frames are free ...
        carol = ui.open_page(browser)
        ui.goto(carol, f"{dash.url}/review", "Review")
        sign_in(carol, "carol")
        assert frames_on_page(carol) == order[:3]  # ... and the next operator gets them, not in 300 s
        assert time.monotonic() - signed_out_at < 120
        # Signed out stays signed out: the cookie is gone, so a reload shows the sign-in form.
        alice.reload()
        ui.goto(alice, f"{dash.url}/review", "Review")
        expect(alice.get_by_text("Sign in (sidebar) to label frames.", exact=False)).to_be_visible()
        assert session_cookies(alice) == []
        ui.no_errors(carol)


# ---- the pieces without a browser ------------------------------------------------------------------------


def test_tokens_are_refused_when_changed_expired_dated_ahead_or_when_the_password_changed():
    key = b"k" * 32
    alice = Account("scrypt$1$2$3$salt$hash", "operator")
    accounts = {"alice": alice}
    token = session_cookie.issue("alice", alice, key, now=1_000_000)
    assert session_cookie.verify(token, accounts, key, 3600, now=1_000_100) == ("alice", 1_000_000)
    cases = {
        token.replace(".", "x.", 1): "signature does not match",  # one character more in the payload
        token: "expired",  # checked at now + 2 h below
    }
    for bad, reason in cases.items():
        with pytest.raises(session_cookie.CookieRefused, match=reason):
            session_cookie.verify(bad, accounts, key, 3600, now=1_000_000 + 7200)
    with pytest.raises(session_cookie.CookieRefused, match="signature does not match"):
        session_cookie.verify(token, accounts, b"o" * 32, 3600, now=1_000_100)  # another key
    with pytest.raises(session_cookie.CookieRefused, match="dated in the future"):
        session_cookie.verify(token, accounts, key, 3600, now=1_000_000 - 600)
    with pytest.raises(session_cookie.CookieRefused, match="password of 'alice' changed"):
        session_cookie.verify(token, {"alice": Account("scrypt$new", "operator")}, key, 3600, now=1_000_100)
    with pytest.raises(session_cookie.CookieRefused, match="no longer has an account"):
        session_cookie.verify(token, {}, key, 3600, now=1_000_100)
    for garbage in ("", ".", "not-a-token", "é.é"):
        with pytest.raises(session_cookie.CookieRefused):
            session_cookie.verify(garbage, accounts, key, 3600)
    assert 'linewatch_session=; Path=/; Max-Age=0; SameSite=Strict' in session_cookie.write_script("", 3600)
    with pytest.raises(ValueError):
        session_cookie.write_script('x"; alert(1); "', 3600)


def test_the_key_file_is_made_once_owner_only_and_a_short_one_is_refused(tmp_path):
    settings = Settings(dashboard={"accounts_file": tmp_path / "a" / "operators.toml"})
    (tmp_path / "a").mkdir()
    key = session_cookie.signing_key(settings)
    path = tmp_path / "a" / "operators.toml.cookie-key"
    assert len(key) == 64 and path.read_bytes() == key and path.stat().st_mode & 0o077 == 0
    session_cookie._keys.clear()
    assert session_cookie.signing_key(settings) == key  # the same key after a restart
    path.write_bytes(b"short")
    session_cookie._keys.clear()
    with pytest.raises(ValueError, match="holds 5 bytes"):
        session_cookie.signing_key(settings)
    session_cookie._keys.clear()
    with pytest.raises(ValueError, match="at least 32 characters"):
        Settings(dashboard={"cookie_secret": "short"})


def test_roles_come_from_the_accounts_file_and_oidc_claims(tmp_path):
    path = tmp_path / "operators.toml"
    path.write_text('[operators.old]\npassword_hash = "scrypt$x"\n')  # a file written before roles
    assert load_accounts(path)["old"].role == "operator"
    path.write_text('[operators.eve]\npassword_hash = "scrypt$x"\nrole = "admin"\n')
    with pytest.raises(AccountsError, match="operator 'eve': unknown role 'admin': use one of viewer, operator, "
                                            "engineer"):
        load_accounts(path)
    path.unlink()
    assert set_password(path, "eng", "a long password", "engineer")
    assert not set_password(path, "eng", "another long password")  # a new password keeps the role
    assert load_accounts(path)["eng"].role == "engineer"
    with pytest.raises(AccountsError, match="unknown role 'boss'"):
        set_password(path, "x", "a long password", "boss")

    assert [may(None, "viewer"), may(None, "operator")] == [True, False]
    assert [may(Operator("o", True, "operator"), r) for r in ("viewer", "operator", "engineer")] == \
        [True, True, False]
    s = Settings(dashboard={"oidc": True, "oidc_roles": {"Line-Engineers": "engineer", "maria@plant.example":
                                                         "operator", "qa": "viewer"}})
    assert oidc_role(s, {"email": "MARIA@plant.example", "groups": ["qa"]}) == "operator"  # the highest match
    assert oidc_role(s, {"email": "olek@plant.example", "groups": ["line-engineers"]}) == "engineer"
    assert oidc_role(s, {"email": "guest@plant.example", "groups": "visitors"}) == "viewer"  # the default
    assert oidc_role(Settings(dashboard={"oidc_default_role": "operator"}), {"email": "x@y"}) == "operator"
    with pytest.raises(ValueError):
        Settings(dashboard={"oidc_roles": {"x": "admin"}})


def test_operator_cli_sets_roles_lists_them_and_init_creates_one_engineer_once(tmp_path):
    from typer.testing import CliRunner

    from linewatch.cli import app

    path = tmp_path / "operators.toml"
    run = CliRunner().invoke
    result = run(app, ["operator", "add", "maria", "--accounts", str(path), "--password-stdin", "--role", "boss"],
                 input="a long password\n")
    assert result.exit_code == 2 and "unknown role 'boss'" in result.output and not path.exists()
    result = run(app, ["operator", "init", "--accounts", str(path)])
    assert result.exit_code == 0, result.output
    password = result.output.split("password: ")[1].split()[0]
    assert len(password) == 20 and path.stat().st_mode & 0o077 == 0
    from linewatch.dashboard.accounts import check_login

    assert check_login(load_accounts(path), "admin", password) and load_accounts(path)["admin"].role == "engineer"
    assert run(app, ["operator", "init", "--accounts", str(path)]).output.strip() == \
        f"accounts file {path} exists: nothing changed"
    assert run(app, ["operator", "add", "maria", "--accounts", str(path), "--password-stdin"],
               input="a long password\n").exit_code == 0
    assert run(app, ["operator", "role", "maria", "viewer", "--accounts", str(path)]).exit_code == 0
    assert run(app, ["operator", "list", "--accounts", str(path)]).output == "admin\tengineer\nmaria\tviewer\n"
    result = run(app, ["operator", "role", "nobody", "viewer", "--accounts", str(path)])
    assert result.exit_code != 0 and "no operator 'nobody'" in result.output


def test_the_compose_dashboard_needs_a_sign_in_to_label(compose, tmp_path):
    """deploy/compose.yaml ships with sign-in on: the dashboard's settings select accounts mode, the accounts file
    lives in a writable volume of its own, and the first start makes it (one engineer, a password printed once)."""
    from linewatch.dashboard.auth import mode

    dash = compose["services"]["dashboard"]
    env = dash["environment"]
    assert env["LINEWATCH_DASHBOARD__ACCOUNTS_FILE"] == "/var/lib/linewatch-dashboard/accounts.toml"
    assert "--init-accounts" in dash["command"]
    # docker-compose writes a volume as "source:target[:mode]" or as a mapping, by version
    mounts = [v.split(":") if isinstance(v, str) else [v["source"], v["target"], "ro" if v.get("read_only") else "rw"]
              for v in dash["volumes"]]
    [mount] = [m for m in mounts if m[1] == "/var/lib/linewatch-dashboard"]
    assert mount[0] == "dashboard-data" and mount[2:] in ([], ["rw"]) and "dashboard-data" in compose["volumes"]
    settings = Settings(dashboard={"accounts_file": tmp_path / "accounts.toml"})
    assert mode(settings) == "accounts"  # anonymous visitors look; labelling needs a signed-in operator
    started = subprocess.run([sys.executable, "-m", "linewatch", "operator", "init", "--accounts",
                              str(tmp_path / "accounts.toml")], capture_output=True, text=True, timeout=60)
    assert started.returncode == 0 and "engineer 'admin', password: " in started.stdout
