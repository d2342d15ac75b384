"""``linewatch camera product CAM PRODUCT [--at]`` and ``camera history [CAM]`` (issue 18, docs/products.md) on a
SQLite and a PostgreSQL record: a changeover is a ``camera_products`` row with who set it, the history lists them
oldest first, and an invalid product, camera id or time is one ``error:`` line, exit status 2, nothing written.
Run in this process (CliRunner): each ``python -m linewatch`` would import for seconds."""

from __future__ import annotations

import datetime as dt

import pytest
from typer.testing import CliRunner

from linewatch.cli import app
from linewatch.contracts.changeovers import CameraProducts, changeovers
from linewatch.contracts.database import make_engine
from linewatch.contracts.settings import get_settings


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def record_url(request, tmp_path, monkeypatch) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'record.db'}"
    else:
        name = f"camcli_{abs(hash(request.node.name)) % 10**8}"
        url = request.getfixturevalue("postgres_server").fresh_database(name)
    monkeypatch.setenv("LINEWATCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LINEWATCH_DATABASE__URL", url)
    monkeypatch.setenv("LOGNAME", "maria")
    monkeypatch.delenv("LINEWATCH_KAFKA__BOOTSTRAP_SERVERS", raising=False)
    get_settings.cache_clear()
    yield url
    get_settings.cache_clear()


def linewatch(*args: str, code: int = 0) -> str:
    get_settings.cache_clear()
    done = CliRunner().invoke(app, ["camera", *args])
    assert done.exit_code == code, (done.stdout, done.stderr)
    return done.stdout if code == 0 else done.stderr


def test_a_changeover_is_recorded_with_who_set_it_and_the_history_lists_it(record_url):
    out = linewatch("product", "cam-1", "bottle", "--at", "2026-12-01T08:00:00Z", "--by", "olek")
    assert out == "camera cam-1 shows bottle from 2026-12-01 08:00:00 UTC on (set by olek)\n"
    # an offset is converted to UTC; ahead of time is allowed
    linewatch("product", "cam-1", "magnetic_tile", "--at", "2026-12-01T14:30:00+01:00")
    linewatch("product", "cam-2", "bottle", "--at", "2026-12-01T09:00:00Z")
    before = dt.datetime.now(dt.UTC)
    linewatch("product", "cam-2", "default")  # now, set by the OS user
    engine = make_engine(record_url)
    rows = changeovers(engine)
    assert [(r.camera_id, r.product, r.set_by) for r in rows] == [
        ("cam-1", "bottle", "olek"), ("cam-1", "magnetic_tile", "maria"), ("cam-2", "bottle", "maria"),
        ("cam-2", "default", "maria")]
    assert rows[1].since == dt.datetime(2026, 12, 1, 13, 30, tzinfo=dt.UTC)
    assert before <= rows[3].since <= dt.datetime.now(dt.UTC)
    routes = CameraProducts(rows)
    assert routes.product_at("cam-1", dt.datetime(2026, 12, 1, 13, 29, 59, tzinfo=dt.UTC)) == "bottle"
    assert routes.product_at("cam-1", dt.datetime(2026, 12, 1, 13, 30, tzinfo=dt.UTC)) == "magnetic_tile"
    assert linewatch("history", "cam-1").splitlines() == [
        "cam-1  2026-12-01 08:00:00 UTC  bottle        set by olek",
        "cam-1  2026-12-01 13:30:00 UTC  magnetic_tile set by maria"]
    assert len(linewatch("history").splitlines()) == 4
    assert linewatch("history", "cam-9") == "no changeover recorded for camera cam-9\n"
    engine.dispose()


@pytest.mark.parametrize(("args", "message"), [
    (["cam-1", "Bottle"], "product 'Bottle' is not a product name"),
    (["cam-1", "all"], "it stands for every product"),
    (["cam-1", "v3"], "it reads as a version of the default product"),
    (["", "bottle"], "camera_id"),
    (["cam-1", "bottle", "--at", "yesterday"], "--at 'yesterday' is not an ISO 8601 time"),
    (["cam-1", "bottle", "--at", "2026-12-01T08:00:00"], "has no time zone: add Z for UTC"),
    (["cam-1", "bottle", "--by", " "], "--by ' ': who sets the changeover"),
], ids=["upper-case", "all", "version-like", "empty-camera", "not-a-time", "naive-time", "blank-by"])
def test_an_invalid_changeover_is_one_error_line_and_writes_nothing(record_url, args, message):
    err = linewatch("product", *args, code=2)
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert linewatch("history") == "no changeover recorded\n"


def test_a_second_changeover_at_the_same_instant_is_refused(record_url):
    linewatch("product", "cam-1", "bottle", "--at", "2026-12-01T08:00:00Z")
    err = linewatch("product", "cam-1", "magnetic_tile", "--at", "2026-12-01T09:00:00+01:00", code=2)
    assert "camera 'cam-1' already has a changeover at 2026-12-01T08:00:00+00:00" in err
    assert [r.product for r in changeovers(make_engine(record_url))] == ["bottle"]


def test_a_product_without_an_active_model_is_recorded_with_a_note(record_url):
    done = CliRunner().invoke(app, ["camera", "product", "cam-1", "magnetic_tile"])
    assert done.exit_code == 0
    assert "note: magnetic_tile has no active model" in done.stderr and "no_model" in done.stderr
