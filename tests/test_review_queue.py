"""The review queue on SQLite and PostgreSQL: only frames that need a person (the uncertain band, a sample of
confident frames, good labels waiting for a second operator), in the operator's order, and claimed by the operator
who opened them, so two operators never get the same frame and a page does not move under a click."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from test_labels import T0, inspection

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.labels import record_labels
from linewatch.contracts.schema import Inspection, ReviewClaim
from linewatch.contracts.settings import Settings
from linewatch.dashboard.review_queue import QueueRule, _take, claim, waiting, waiting_count

RULE = QueueRule(band=(0.8, 1.25), sample_every=5, second_opinion_above=2.0)
# frame_id (= capture order, = inspection id in a fresh database) -> normalised score
SCORES = {1: 0.5, 2: 0.85, 3: 1.1, 4: 1.3, 5: 0.3, 6: 1.24, 7: 3.0, 8: 0.79, 9: 2.5, 10: 0.2}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def engine(request, tmp_path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'record.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres_server").fresh_database(f"queue_{abs(hash(request.node.name)) % 10**8}")
    engine = make_engine(url)
    migrate(engine)
    with engine.begin() as conn:
        conn.execute(insert(Inspection), [inspection(f, score) for f, score in SCORES.items()])
        assert list(conn.execute(select(Inspection.id).order_by(Inspection.id)).scalars()) == list(SCORES)
        record_labels(conn, [7], "good", "maria", T0)  # far above the threshold: waits for a second operator
        record_labels(conn, [8], "defect", "olek", T0)  # labelled: out of the queue, band or not
    yield engine
    engine.dispose()


def ids(rows) -> list[int]:
    return [r.id for r in rows]


def test_the_queue_holds_the_uncertain_band_a_sample_and_second_opinions_in_the_chosen_order(engine):
    now = T0 + dt.timedelta(minutes=5)
    # 2, 3, 6: in [0.8, 1.25]; 5 and 10: confident, sampled (id % 5 == 0); 7: waits for a second operator.
    # Not queued: 1 (0.5), 4 (1.3), 9 (2.5): confident and not sampled; 8: labelled.
    assert ids(waiting(engine, RULE, None, now=now)) == [2, 3, 5, 6, 7, 10]
    assert ids(waiting(engine, RULE, None, order="uncertain", now=now)) == [3, 2, 6, 7, 5, 10]  # 1.1, 1/0.85 ...
    assert ids(waiting(engine, RULE, None, kind="defect", now=now)) == [3, 6, 7]
    assert ids(waiting(engine, RULE, "maria", now=now)) == [2, 3, 5, 6, 10]  # never her own labelled frame
    assert ids(waiting(engine, RULE, "olek", now=now)) == [2, 3, 5, 6, 7, 10]
    assert waiting_count(engine, RULE, "maria", now=now) == 5
    no_sample = QueueRule((0.8, 1.25), 0, 2.0)
    assert ids(waiting(engine, no_sample, None, now=now)) == [2, 3, 6, 7]
    with pytest.raises(ValueError, match="order must be one of"):
        waiting(engine, RULE, None, order="newest", now=now)


def test_two_operators_never_get_the_same_frame_and_a_claimed_page_stays_in_place(engine):
    now = T0 + dt.timedelta(minutes=5)
    assert ids(claim(engine, RULE, "maria", limit=2, claim_s=300, now=now)) == [2, 3]
    assert ids(claim(engine, RULE, "olek", limit=2, claim_s=300, now=now)) == [5, 6]
    assert ids(waiting(engine, RULE, None, now=now)) == [7, 10]  # a viewer sees what nobody has open
    assert waiting_count(engine, RULE, "olek", now=now) == 4  # 5, 6 (his), 7, 10; not maria's 2 and 3
    # An older frame arrives, and the order changes: maria's open page stays as it is, in its order.
    with engine.begin() as conn:
        conn.execute(insert(Inspection), [inspection(0, 1.0) | {"captured_at": T0 - dt.timedelta(hours=1)}])
    later = now + dt.timedelta(seconds=60)
    assert ids(claim(engine, RULE, "maria", limit=2, claim_s=300, now=later)) == [2, 3]
    assert ids(claim(engine, RULE, "maria", order="uncertain", limit=2, claim_s=300, now=later)) == [3, 2]
    # She labels 2: it leaves her page; the next free frame fills its place (the new one, oldest, shown first).
    with engine.begin() as conn:
        record_labels(conn, [2], "good", "maria", later)
    new = 11
    assert ids(claim(engine, RULE, "maria", limit=2, claim_s=300, now=later)) == [new, 3]
    # The read-then-write race: a claim another operator holds is not taken.
    with engine.begin() as conn:
        assert _take(conn, [3, 7], "olek", later, later + dt.timedelta(seconds=300)) == {7}
    # Claims run out: 10 minutes later nobody holds anything and olek gets the oldest frames.
    expired = later + dt.timedelta(minutes=10)
    assert ids(claim(engine, RULE, "olek", limit=3, claim_s=300, now=expired)) == [new, 3, 5]
    with engine.connect() as conn:
        assert sorted(conn.execute(select(ReviewClaim.inspection_id, ReviewClaim.operator)).all()) == \
            [(3, "olek"), (5, "olek"), (new, "olek")]  # maria's expired claims and olek's old ones are gone


def test_the_review_band_setting_has_its_documented_default_and_refuses_a_band_that_misses_the_threshold():
    s = Settings()
    assert QueueRule.from_settings(s) == QueueRule((0.8, 1.25), 20, 2.0)
    assert (s.dashboard.review_claim_s, s.dashboard.review_min_view_s) == (300.0, 0.5)
    with pytest.raises(ValueError, match="0 < low <= 1 <= high"):
        Settings(dashboard={"review_band": (1.1, 1.5)})
