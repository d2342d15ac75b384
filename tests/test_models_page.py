"""The Models page in a real browser (Playwright + Chromium, the fixtures of test_dashboard.py) on real services:
a failed announcement (registry v2, workers on v1) is shown and "Re-announce" fixes it, an engineer rolls back and
the models topic, the registry and a real worker follow (Kafka, PostgreSQL, Redis, as test_trainer.py); viewers
and operators get no action, and a click on a confirmation after the engineer lost the role changes nothing; a
review set with 0 defects is never shown green; the training job's progress bar, what it trains on (counts and the
frames left out with why) and a failed job's reason."""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import test_dashboard as ui
import test_rollout
from kafka.errors import KafkaTimeoutError
from playwright.sync_api import Page, expect
from sqlalchemy import update
from test_label_noise import T0, sqlite_line  # noqa: F401 -- the fixture

from linewatch.contracts.live_state import LiveStateReader
from linewatch.contracts.schema import ModelVersion
from linewatch.contracts.settings import Settings
from linewatch.dashboard import data
from linewatch.dashboard.accounts import hash_password, set_role
from linewatch.trainer import job_queue as jobs
from linewatch.trainer.dataset import TrainingSet
from linewatch.trainer.job import run_job
from linewatch.trainer.registry import ModelRegistry
from linewatch.trainer.rollout import current_announcement

from datasets import bottle
from pipeline_harness import Pipeline, other_model

pytestmark = pytest.mark.services

line = test_rollout.line  # the fixture: a line with a worker on Apache Kafka, PostgreSQL and Redis

# the fixtures this module shares with test_dashboard.py
browser, scorer, sqlite_stores = ui.browser, ui.scorer, ui.sqlite_stores

PASSWORD = "long enough password"
# The issue 15 review: 28 goods, 0 defects, once announced in green as "not worse".
ZERO_DEFECT_REVIEW = {
    "evidence": {"goods": 28, "confirmed_defects": 0, "reference_defects": 0, "excluded_as_training_frames": 20},
    "review_set": {"frames": 28, "good": 28, "defect": 0, "threshold": 0.5, "false_rejects": 0, "misses": 0,
                   "image_auroc": None, "false_reject_rate": 0.0, "miss_rate": None},
    "active_on_review_set": {"frames": 28, "good": 28, "defect": 0, "threshold": 0.48, "false_rejects": 1,
                             "misses": 0, "image_auroc": None, "false_reject_rate": 1 / 28, "miss_rate": None},
    "decision": "not worse than the active model on 28 labelled frames",
}


# A running job's training set: 10 confirmed goods found, 5 trained on, 3 held out, 2 dropped (a copy of another
# frame's bytes, a file damaged on disk), and a good that waits for a second operator (TrainingSet.summary's shape).
TRAINING_SET = TrainingSet(
    base=19, confirmed=5, confirmed_found=10, awaiting=1,
    held_out=[{"path": f"/kept/cam-1/0000{i}.png", "role": "held_out"} for i in (1, 2, 3)],
    dropped=[{"path": "/kept/cam-1/00011.png", "role": "dropped", "source": "confirmed", "kind": "duplicate",
              "reason": "same bytes as 00007.png"},
             {"path": "/kept/cam-1/00012.png", "role": "dropped", "source": "confirmed", "kind": "unreadable",
              "reason": "unreadable: cannot decode image: truncated PNG"},
             {"path": "/kept/cam-2/00013.png", "role": "dropped", "source": "awaiting", "kind": "second_opinion",
              "reason": "awaiting a second operator: scored 2.71 x threshold (> 2), confirmed good by 1 operator(s)"}])


@pytest.fixture(autouse=True)
def patient_expect():
    """Each action reruns the page and waits on SQL, Kafka and other sessions' load: expect() waits up to 30 s."""
    expect.set_options(timeout=30_000)
    yield
    expect.set_options(timeout=5_000)


def write_accounts(path: Path, roles: dict[str, str]) -> None:
    """The accounts file with one account per name, each with :data:`PASSWORD` and its role."""
    lines = []
    for name, role in roles.items():
        lines += [f'[operators."{name}"]', f'password_hash = "{hash_password(PASSWORD)}"', f'role = "{role}"', ""]
    path.write_text("\n".join(lines))
    os.chmod(path, 0o600)


def sign_in(page: Page, name: str) -> None:
    sidebar = page.get_by_test_id("stSidebar")
    sidebar.get_by_label("Operator").fill(name)
    sidebar.get_by_label("Password", exact=True).fill(PASSWORD)
    ui.click(sidebar.get_by_role("button", name="Sign in"))
    expect(sidebar.get_by_text(f"Signed in as {name}")).to_be_visible()
    ui.settled(page)


def sign_out(page: Page) -> None:
    ui.click(page.get_by_test_id("stSidebar").get_by_role("button", name="Sign out"))
    expect(page.get_by_test_id("stSidebar").get_by_role("button", name="Sign in")).to_be_visible()
    ui.settled(page)


ACTION = re.compile(r"^(Activate|Roll back|Re-announce|Yes, )")


def _worker_models(p: Pipeline) -> set[str]:
    return {w["model_version"] for w in LiveStateReader(p.redis).workers() if w["alive"]}


def test_a_failed_announcement_is_shown_reannounce_fixes_it_and_an_engineer_rolls_back(
        browser, line, tmp_path):
    p = line
    assert p.registry.use(p.model_dir, "test").version == "v1"
    assert p.registry.register(other_model(p.model_dir, tmp_path / "model-b"), parent="v1").version == "v2"
    p.start_worker("w1")
    p.wait_for_workers(1)
    assert _worker_models(p) == {"v1"}
    # The job of issue 15: SQL records v2 active, then announcing fails (here: no broker to announce on), minutes ago.
    ModelRegistry(p.engine, p.settings.artifact_store_root, None).activate("v2", "trainer (job 7)")
    with p.engine.begin() as conn:
        conn.execute(update(ModelVersion).where(ModelVersion.version == "v2").values(
            activated_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)))
    assert current_announcement(p.settings.kafka).version == "v1" and _worker_models(p) == {"v1"}
    (wid,) = [w["worker_id"] for w in LiveStateReader(p.redis).workers() if w["alive"]]

    accounts = tmp_path / "operators.toml"
    write_accounts(accounts, {"erin": "engineer"})
    stores = SimpleNamespace(redis_url=p.env["LINEWATCH_REDIS__URL"], database_url=p.env["LINEWATCH_DATABASE__URL"],
                             state_dir=p.settings.state_dir)
    env = {k: v for k, v in p.env.items() if k.startswith("LINEWATCH_KAFKA__")}
    with ui.Dashboard(stores, LINEWATCH_DASHBOARD__ACCOUNTS_FILE=str(accounts), **env) as dash:
        page = ui.open_page(browser)
        ui.goto(page, f"{dash.url}/models", "Models")
        alarm = page.locator(".st-key-lw_model_disagreement")
        expect(alarm.get_by_text("Registry says v2 is active, but the models topic announces v1")).to_be_visible()
        expect(alarm.get_by_text(f"Registry says v2, worker {wid} runs v1")).to_be_visible()
        expect(alarm.get_by_test_id("stAlertContentError")).to_have_count(2)
        banner = page.locator(f".lw-alarm[data-alarm='model_rollout'][data-subject='{wid}']")  # on every page
        expect(banner).to_contain_text(f"Registry says v2, worker {wid} runs v1")
        expect(page.get_by_role("button", name=ACTION)).to_have_count(0)  # anonymous: no action
        ui.screenshot(page, "models-registry-v2-workers-v1")

        sign_in(page, "erin")
        ui.click(ui.button(page, "lw_model_fix"))
        ui.click(page.get_by_role("button", name="Yes, re-announce v2"))
        expect(page.get_by_text("v2 announced again by erin", exact=False)).to_be_visible()
        p.wait_until(lambda: _worker_models(p) == {"v2"}, 60, "the worker to switch to v2")
        expect(alarm).to_have_count(0)
        expect(banner).to_have_count(0)
        expect(page.get_by_text("Registry, models topic and workers agree on v2", exact=False)).to_be_visible()
        assert current_announcement(p.settings.kafka).version == "v2"
        assert "re-announced by erin" in p.registry.get("v2").notes

        ui.click(ui.button(page, "lw_model_roll_back"))
        expect(page.get_by_text("Roll back from v2 to v1?", exact=False)).to_be_visible()
        assert p.registry.active().version == "v2"  # nothing before "yes"
        ui.click(page.get_by_role("button", name="Yes, roll back to v1"))
        expect(page.get_by_text("Rolled back: v1 is active again (by erin)", exact=False)).to_be_visible()
        active = p.registry.active()
        assert (active.version, active.activated_by, p.registry.get("v2").status) == ("v1", "erin", "retired")
        assert "rollback from v2" in active.notes
        assert current_announcement(p.settings.kafka).version == "v1"
        p.wait_until(lambda: _worker_models(p) == {"v1"}, 60, "the worker to switch back to v1")
        ui.no_errors(page)
        ui.screenshot(page, "models-rolled-back")
    assert p.stop_workers()["w1"] == 0


def test_viewers_and_operators_get_no_action_a_stale_confirmation_changes_nothing_and_no_defects_is_not_green(
        browser, scorer, quick_model, sqlite_stores, tmp_path):
    stores = sqlite_stores
    registry = ModelRegistry(stores.engine, stores.state_dir / "models", None)
    assert registry.use(quick_model.model_dir, "test").version == "v1"
    v2 = registry.register(other_model(quick_model.model_dir, tmp_path / "model-b"), parent="v1",
                           metrics=ZERO_DEFECT_REVIEW, notes=ZERO_DEFECT_REVIEW["decision"])
    failed = jobs.request_job(stores.engine, "manual", requested_by="erin")
    assert jobs.claim_next(stores.engine, 1).id == failed
    jobs.finish(stores.engine, failed, "failed", error="KafkaTimeoutError: announcing v2 timed out\ntraceback")
    running = jobs.request_job(stores.engine, "threshold", requested_by="trainer")
    assert jobs.claim_next(stores.engine, 1).id == running
    jobs.progress(stores.engine, running, stage="training", epoch=3, epochs=10, loss=0.25, eta_s=42.0,
                  training_set=TRAINING_SET.summary())

    accounts = tmp_path / "operators.toml"
    write_accounts(accounts, {"erin": "engineer", "oscar": "operator"})
    with ui.Dashboard(stores, LINEWATCH_DASHBOARD__ACCOUNTS_FILE=str(accounts),
                      LINEWATCH_KAFKA__BOOTSTRAP_SERVERS="") as dash:
        page = ui.open_page(browser)
        ui.goto(page, f"{dash.url}/models", "Models")
        # The newest version's evidence: 28 goods, 0 defects: amber, saying what could not be checked; never green.
        verdict = page.locator(".st-key-lw_verdict_unchecked")
        expect(verdict.get_by_test_id("stAlertContentWarning")).to_contain_text(
            "misses could not be checked: the review set holds 0 labelled defects")
        expect(verdict).to_contain_text("28 labelled goods and 0 labelled defects")
        expect(page.locator(".st-key-lw_verdict_passed")).to_have_count(0)
        expect(page.get_by_test_id("stAlertContentSuccess").filter(has_text="not worse")).to_have_count(0)
        table = page.get_by_test_id("stTable").filter(has_text="misses on labelled defects")
        expect(table).to_contain_text("not checked (0 defects)")
        expect(table).to_contain_text("1 of 28 (3.6%)")  # v1's false rejects on the same goods
        calibration = page.locator(".st-key-lw_threshold_evidence")
        expect(calibration).to_contain_text(v2.version)
        expect(calibration).to_contain_text("UNDER-CALIBRATED")  # the quick model: 5 held-out goods for a 1 % target
        # The training job: a progress bar with its epoch and time left; the failed one's reason.
        expect(page.get_by_test_id("stProgress")).to_have_count(1)
        expect(page.get_by_text(f"Training job {running}: training, epoch 3/10, about 42 s left")).to_be_visible()
        expect(page.get_by_text(f"Training job {failed} failed: KafkaTimeoutError: announcing v2 timed out",
                                exact=True)).to_be_visible()
        # What it trains on, under the bar: the counts, and the frames left out with why behind an expander.
        trains_on = page.locator(".st-key-lw_training_set")
        expect(trains_on).to_contain_text(f"Training job {running} trains on 19 base images and 5 of 10 confirmed "
                                          "goods: 3 held out as promotion evidence, 2 dropped; 1 more labelled good "
                                          "waits for a second operator.")
        left_out = trains_on.get_by_text("3 frames left out, and why (1 duplicate, 1 second opinion, 1 unreadable)")
        expect(left_out).to_be_visible()
        expect(trains_on.get_by_text("same bytes as 00007.png")).to_be_hidden()  # folded until asked
        ui.click(left_out)
        dropped = trains_on.get_by_test_id("stTable")
        expect(dropped).to_contain_text("00012.png")
        expect(dropped).to_contain_text("unreadable: cannot decode image: truncated PNG")
        expect(dropped).to_contain_text("same bytes as 00007.png")
        expect(dropped).to_contain_text("good, one operator")
        ui.screenshot(page, "models-zero-defect-evidence")

        for who in (None, "oscar"):  # a viewer, then an operator
            if who:
                sign_in(page, who)
            expect(page.get_by_text("needs an engineer's sign-in", exact=False)).to_be_visible()
            expect(page.locator(".st-key-lw_model_actions")).to_have_count(0)
            expect(page.get_by_role("button", name=ACTION)).to_have_count(0)
        sign_out(page)

        sign_in(page, "erin")
        ui.click(ui.button(page, "lw_model_activate"))
        expect(page.get_by_role("button", name="Yes, activate v2")).to_be_visible()
        set_role(accounts, "erin", "operator")  # erin is no longer an engineer (`linewatch operator role`)
        ui.click(page.get_by_role("button", name="Yes, activate v2"))
        expect(page.get_by_text("Refused: only an engineer may activate a model (erin is operator). Nothing was "
                                "changed.")).to_be_visible()
        expect(page.get_by_role("button", name=ACTION)).to_have_count(0)
        assert (registry.active().version, registry.get("v2").status) == ("v1", "candidate")
        ui.screenshot(page, "models-refused")


def test_with_the_broker_refusing_connections_the_page_and_its_actions_say_so_at_once(
        browser, quick_model, sqlite_stores, tmp_path):
    """The Models page stalled 30 s on each rollout check (kafka-python's bootstrap) and an action tried to announce
    for minutes when the broker was gone: both now say so at once, and nothing is changed."""
    stores = sqlite_stores
    registry = ModelRegistry(stores.engine, stores.state_dir / "models", None)
    assert registry.use(quick_model.model_dir, "test").version == "v1"
    registry.register(other_model(quick_model.model_dir, tmp_path / "model-b"), parent="v1")
    with stores.engine.begin() as conn:  # past the rollout window, so the check compares
        conn.execute(update(ModelVersion).where(ModelVersion.version == "v1").values(
            activated_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)))
    accounts = tmp_path / "operators.toml"
    write_accounts(accounts, {"erin": "engineer"})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]  # nothing listens on it once the socket is closed
    with ui.Dashboard(stores, LINEWATCH_DASHBOARD__ACCOUNTS_FILE=str(accounts),
                      LINEWATCH_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{closed}") as dash:
        page = ui.open_page(browser)
        ui.goto(page, f"{dash.url}/models", "Models")
        # what the rollout check cannot read, and agreement claimed only of what it read (no workers here)
        expect(page.get_by_text("The models topic cannot be read (the Kafka broker does not answer: "
                                f"127.0.0.1:{closed}: ", exact=False)).to_be_visible()
        expect(page.get_by_text("Registry: v1 is active; nothing else to compare it with", exact=False)).to_be_visible()
        sign_in(page, "erin")
        ui.click(ui.button(page, "lw_model_activate"))
        ui.click(page.get_by_role("button", name="Yes, activate v2"))
        # within 15 s: the announcement's tries (trainer.announce_*) would have taken 2.5 min
        expect(page.get_by_text(f"Not done: the Kafka broker does not answer (127.0.0.1:{closed}: ",
                                exact=False)).to_be_visible(timeout=15_000)
        expect(page.get_by_text("Nothing was changed; try again once it answers.", exact=False)).to_be_visible()
        assert (registry.active().version, registry.get("v2").status) == ("v1", "candidate")
        ui.screenshot(page, "models-broker-down")
    began = time.monotonic()
    with pytest.raises(KafkaTimeoutError, match="Unable to bootstrap"):
        current_announcement(Settings(kafka={"bootstrap_servers": f"127.0.0.1:{closed}"}).kafka, timeout_s=1.0)
    assert time.monotonic() - began < 5  # the read's own timeout, not kafka-python's 30 s bootstrap


@pytest.mark.slow
def test_a_poisoned_retrain_is_refused_by_the_promotion_rule_and_shown_as_refused(browser, redis_url,
                                                                                   sqlite_line, tmp_path):  # noqa: F811
    """Issue 15's poisoned retrain: the 20 broken bottles of MVTec AD's bottle/test/broken_large labelled good (by
    two operators, so the second-opinion guard lets them train), 10 real goods, the product's reference defects
    (broken_small, contamination), one "Retrain now" -> the trainer's own job refuses the candidate (misses rose),
    the active version stays v1, and the Models page shows the candidate refused, in red, with the reason."""
    lw = sqlite_line  # v1 (the quick model) active
    test = bottle() / "test"
    poisoned = [lw.keep_file(p, "cam-1", T0 + dt.timedelta(minutes=i))
                for i, p in enumerate(sorted((test / "broken_large").glob("*.png")))]
    goods = [lw.keep_file(p, "cam-2", T0 + dt.timedelta(minutes=15 * i))
             for i, p in enumerate(sorted((bottle() / "train" / "good").glob("*.png"))[100:200:10])]
    assert len(poisoned) == 20
    data.add_labels(lw.engine, poisoned + goods, "good", "alice")
    data.add_labels(lw.engine, poisoned, "good", "bob")
    reference = tmp_path / "reference"
    shutil.copytree(test / "broken_small", reference / "broken_small")
    shutil.copytree(test / "contamination", reference / "contamination")
    lw.settings = lw.settings.model_copy(update={"trainer": lw.settings.trainer.model_copy(
        update={"defect_reference": reference})})
    job_id = jobs.request_job(lw.engine, "manual", requested_by="oscar")  # what "Retrain now" queues
    jobs.claim_next(lw.engine, 0)
    assert run_job(lw.settings, job_id) == 0
    job = jobs.get_job(lw.engine, job_id)
    registry = ModelRegistry(lw.engine, lw.settings.artifact_store_root, None)
    v2 = registry.get(job.candidate_version)
    m = v2.metrics
    print(f"poisoned retrain: candidate misses {m['review_set']['misses']}/{m['review_set']['defect']}, active "
          f"{m['active_on_review_set']['misses']}; {m['decision']}")
    assert (job.stage, v2.version, v2.status) == ("rejected", "v2", "rejected")
    assert "misses rose" in m["decision"] and m["review_set"]["defect"] == 43
    assert registry.active().version == "v1"
    assert job.training_set["confirmed_found"] == 30

    stores = SimpleNamespace(redis_url=redis_url, database_url=lw.settings.database_url,
                             state_dir=lw.settings.state_dir)
    with ui.Dashboard(stores, LINEWATCH_KAFKA__BOOTSTRAP_SERVERS="") as dash:
        page = ui.open_page(browser)
        ui.goto(page, f"{dash.url}/models", "Models")
        expect(page.get_by_test_id("stAlertContentSuccess").filter(has_text="Active model: v1")).to_be_visible()
        refused = page.locator(".st-key-lw_verdict_refused").get_by_test_id("stAlertContentError")
        expect(refused).to_contain_text(f"Refused by the promotion rule on {m['review_set']['good']} labelled goods "
                                        "and 43 labelled defects")
        expect(refused).to_contain_text("misses rose")
        expect(page.locator(".st-key-lw_verdict_passed")).to_have_count(0)
        expect(page.locator(".st-key-lw_verdict_unchecked")).to_have_count(0)
        table = page.get_by_test_id("stTable").filter(has_text="misses on labelled defects")
        expect(table).to_contain_text(f"{m['review_set']['misses']} of 43")
        expect(table).to_contain_text(f"{m['active_on_review_set']['misses']} of 43")
        expect(page.get_by_test_id("stTable").filter(has_text="rejected").first).to_contain_text("v2")
        expect(page.locator(".st-key-lw_training_set")).to_contain_text(f"Training job {job_id} trains on")
        expect(page.get_by_test_id("stException")).to_have_count(0)
        expect(page.get_by_test_id("stAlertContentError")).to_have_count(1)  # the refusal, and nothing else red
        ui.screenshot(page, "models-poisoned-retrain-refused")
    assert registry.active().version == "v1"
