"""The Review page's buttons without a browser (Streamlit's AppTest, SQLite): a click on a frame that has just
taken the place of the clicked one labels nothing (field case c32), bulk good leaves out flagged frames unless
ticked and stores nothing before its confirmation. The browser versions are in test_review_page.py."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import insert, select
from streamlit.testing.v1 import AppTest
from test_labels import inspection

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.schema import Inspection, Label
from linewatch.contracts.settings import get_settings

PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJ"
                       "RU5ErkJggg==")  # one pixel: the page only checks that the kept file is there
SCORES = [0.9, 1.1, 1.2, 0.85, 0.95]  # frames 1..5, oldest first; 2 and 3 flagged (above the threshold)
# The clicks "at once" must come within this of the page showing the frame (or the question): one AppTest run, which
# takes over 0.3 s on 2 loaded cores (the suite runs two test processes at once), so it is longer than the default.
MIN_VIEW_S = 3.0
PAGE = "from linewatch.dashboard.pages import review\nreview.render()\n"


@pytest.fixture
def app(tmp_path, monkeypatch) -> Iterator[tuple[AppTest, object]]:
    url = f"sqlite:///{tmp_path / 'record.db'}"
    engine = make_engine(url)
    migrate(engine)
    (tmp_path / "kept").mkdir()
    rows = []
    for i, score in enumerate(SCORES, start=1):
        (tmp_path / "kept" / f"{i}.png").write_bytes(PNG)
        rows.append(inspection(i, score) | {"image_uri": (tmp_path / "kept" / f"{i}.png").as_uri()})
    with engine.begin() as conn:
        conn.execute(insert(Inspection), rows)
    for name, value in {"DATABASE__URL": url, "IMAGE_STORE": str(tmp_path), "STATE_DIR": str(tmp_path),
                        "DASHBOARD__REVIEW_MIN_VIEW_S": str(MIN_VIEW_S)}.items():
        monkeypatch.setenv(f"LINEWATCH_{name}", value)
    get_settings.cache_clear()
    (tmp_path / "page.py").write_text(PAGE)
    at = AppTest.from_file(str(Path(tmp_path / "page.py")), default_timeout=60)
    at.session_state["lw_operator_name"] = "maria"
    at.run()
    assert not at.exception
    yield at, engine
    engine.dispose()
    get_settings.cache_clear()


def labels(engine) -> list[tuple]:
    with engine.connect() as conn:
        return list(conn.execute(select(Label.inspection_id, Label.label, Label.operator)
                                 .where(Label.revoked_at.is_(None)).order_by(Label.id)))


def frames(at: AppTest) -> list[int]:
    return [int(b.key.removeprefix("lw_good_")) for b in at.button if b.key.startswith("lw_good_")]


def test_a_click_on_the_frame_that_just_took_the_clicked_ones_place_labels_nothing(app):
    at, engine = app
    # Uncertain band [0.8, 1.25]: all five queued, oldest first, each Good button named by its frame.
    assert frames(at) == [1, 2, 3, 4, 5] and at.metric[0].value == "5"
    time.sleep(MIN_VIEW_S)
    at.button(key="lw_good_1").click().run()
    assert [s.value for s in at.success] == ["Labelled frame 1 **good** as maria. Undo with U."]
    assert frames(at) == [2, 3, 4, 5]
    at.button(key="lw_good_2").click().run()  # the second click of a double click: frame 2 is where 1 was
    [warning] = [w.value for w in at.warning]
    assert warning.startswith("Nothing labelled: frame 2 had been on screen there for only ")
    assert labels(engine) == [(1, "good", "maria")]
    time.sleep(MIN_VIEW_S)  # looked at: now a click counts
    at.button(key="lw_defect_2").click().run()
    assert labels(engine) == [(1, "good", "maria"), (2, "defect", "maria")]
    assert frames(at) == [3, 4, 5] and not at.exception


def test_bulk_good_leaves_out_flagged_frames_unless_ticked_and_asks_first(app):
    at, engine = app
    assert [c.key for c in at.checkbox] == ["lw_pick_2", "lw_pick_3"]  # only the flagged frames
    assert at.button(key="lw_bulk_good").label == "Label 3 shown as good…"  # 1, 4, 5
    at.checkbox(key="lw_pick_3").check().run()
    assert at.button(key="lw_bulk_good").label == "Label 4 shown as good…"
    at.button(key="lw_bulk_good").click().run()
    assert labels(engine) == []  # asking stores nothing
    assert [w.value for w in at.warning] == ["Label these 4 frames **good** as maria? Frame ids: 1, 3, 4, 5."]
    at.button(key="lw_bulk_yes").click().run()  # answered at once: not read
    assert labels(engine) == [] and at.warning[0].value.startswith("Nothing labelled: the confirmation was")
    time.sleep(MIN_VIEW_S)
    at.button(key="lw_bulk_yes").click().run()
    assert sorted(labels(engine)) == [(i, "good", "maria") for i in (1, 3, 4, 5)]
    assert frames(at) == [2]  # the flagged frame not ticked still waits
