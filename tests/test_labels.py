"""Labels are idempotent per (inspection, operator) on SQLite and PostgreSQL (field case c32): a second click is a
no-op, the database itself refuses a second standing label, and migration 0005 turns existing duplicates into
revoked history without changing any effective label."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from linewatch.contracts.database import downgrade, make_engine, migrate
from linewatch.contracts.labels import effective_labels, record_labels
from linewatch.contracts.schema import Inspection, Label
from linewatch.dashboard.data import undo_last

T0 = dt.datetime(2026, 12, 1, 6, 0, tzinfo=dt.UTC)


def inspection(frame_id: int, score: float = 1.0) -> dict:
    return {"camera_id": "cam-1", "line_id": "line-1", "frame_id": frame_id, "part_id": None,
            "captured_at": T0 + dt.timedelta(seconds=frame_id), "processed_at": T0 + dt.timedelta(seconds=frame_id),
            "model_version": "v1", "image_score": score, "normalized_score": score,
            "verdict": "defect" if score > 1 else "good", "threshold": 1.0, "regions": [], "width": 8, "height": 8,
            "queue_wait_ms": 0.0, "decode_ms": 0.0, "inference_ms": 0.0, "total_ms": 0.0, "worker_id": "w",
            "image_uri": f"file:///kept/{frame_id}.png", "heatmap_uri": None, "kafka_topic": None,
            "kafka_partition": None, "kafka_offset": None}


def add_inspections(engine: Engine, n: int) -> list[int]:
    with engine.begin() as conn:
        conn.execute(insert(Inspection), [inspection(i + 1) for i in range(n)])
        return list(conn.execute(select(Inspection.id).order_by(Inspection.id)).scalars())


def rows(engine: Engine) -> list[tuple]:
    with engine.connect() as conn:
        return [(r.inspection_id, r.label, r.operator, r.revoked_at is None)
                for r in conn.execute(select(Label).order_by(Label.id))]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'record.db'}"
    return request.getfixturevalue("postgres_server").fresh_database(f"labels_{abs(hash(request.node.name)) % 10**8}")


@pytest.fixture
def engine(database_url) -> Iterator[Engine]:
    engine = make_engine(database_url)
    migrate(engine)
    yield engine
    engine.dispose()


def test_a_second_click_writes_nothing_and_a_change_of_mind_replaces_the_label(engine):
    a, b, c = add_inspections(engine, 3)
    with engine.begin() as conn:
        assert record_labels(conn, [a], "good", "maria", T0) == [a]
    with engine.begin() as conn:  # the double click, 150 ms later: nothing
        assert record_labels(conn, [a], "good", "maria", T0 + dt.timedelta(milliseconds=150)) == []
    with engine.begin() as conn:  # a bulk action over it and two more frames: only the two new ones
        assert record_labels(conn, [a, b, c, b], "good", "maria", T0 + dt.timedelta(seconds=1)) == [b, c]
    with engine.begin() as conn:  # another operator labels independently
        assert record_labels(conn, [a], "good", "olek", T0 + dt.timedelta(seconds=2)) == [a]
    with engine.begin() as conn:  # maria changes her mind on c: her good label is revoked, the defect stands
        assert record_labels(conn, [c], "defect", "maria", T0 + dt.timedelta(seconds=3)) == [c]
    assert rows(engine) == [(a, "good", "maria", True), (b, "good", "maria", True), (c, "good", "maria", False),
                            (a, "good", "olek", True), (c, "defect", "maria", True)]
    with engine.connect() as conn:
        eff = effective_labels()
        assert dict(conn.execute(select(eff.c.inspection_id, eff.c.label)).all()) == \
            {a: "good", b: "good", c: "defect"}


def test_undo_after_a_change_of_mind_brings_the_earlier_label_back(engine):
    a, b = add_inspections(engine, 2)
    with engine.begin() as conn:
        record_labels(conn, [a, b], "good", "maria", T0)
    with engine.begin() as conn:  # she changes her mind on a (from a stale page or a second tab)
        assert record_labels(conn, [a], "defect", "maria", T0 + dt.timedelta(seconds=5)) == [a]
    assert undo_last(engine, "maria", now=T0 + dt.timedelta(seconds=6)) == [a]
    assert rows(engine) == [(a, "good", "maria", True), (b, "good", "maria", True), (a, "defect", "maria", False)]
    assert undo_last(engine, "maria", now=T0 + dt.timedelta(seconds=7)) == [a, b]  # then the first action
    assert rows(engine) == [(a, "good", "maria", False), (b, "good", "maria", False), (a, "defect", "maria", False)]
    assert undo_last(engine, "maria", now=T0 + dt.timedelta(seconds=8)) == []


def test_the_database_refuses_a_second_standing_label_of_one_operator(engine):
    [a] = add_inspections(engine, 1)
    row = {"inspection_id": a, "label": "good", "operator": "maria", "created_at": T0}
    with engine.begin() as conn:
        conn.execute(insert(Label), [row])
    with pytest.raises(IntegrityError), engine.begin() as conn:  # a writer that bypasses record_labels
        conn.execute(insert(Label), [{**row, "label": "defect", "created_at": T0 + dt.timedelta(seconds=1)}])
    with engine.begin() as conn:  # once revoked (undo), the operator may label the frame again
        conn.execute(Label.__table__.update().values(revoked_at=T0 + dt.timedelta(seconds=2)))
        assert record_labels(conn, [a], "defect", "maria", T0 + dt.timedelta(seconds=3)) == [a]
    assert rows(engine) == [(a, "good", "maria", False), (a, "defect", "maria", True)]


@pytest.mark.parametrize(("label", "operator", "now", "error"), [
    ("bad", "maria", T0, "label must be one of"),
    ("good", "  ", T0, "named operator"),
    ("good", "m" * 129, T0, "at most 128"),
    ("good", "maria", T0.replace(tzinfo=None), "timezone-aware"),
])
def test_bad_label_input_is_refused_with_a_clear_error(tmp_path, label, operator, now, error):
    engine = make_engine(f"sqlite:///{tmp_path / 'record.db'}")
    migrate(engine)
    [a] = add_inspections(engine, 1)
    with pytest.raises(ValueError, match=error), engine.begin() as conn:
        record_labels(conn, [a], label, operator, now)
    assert rows(engine) == []


def test_migration_0005_revokes_older_duplicates_and_keeps_every_effective_label(database_url):
    engine = make_engine(database_url)
    try:
        migrate(engine, "0004")
        a, b = add_inspections(engine, 2)
        s = dt.timedelta(seconds=1)
        with engine.begin() as conn:  # what double clicks left before 0005
            conn.execute(insert(Label), [
                {"inspection_id": i, "label": label, "operator": operator, "created_at": at, "revoked_at": revoked}
                for i, label, operator, at, revoked in [
                    (a, "good", "maria", T0, None), (a, "good", "maria", T0 + s, None),
                    (a, "good", "olek", T0 + 2 * s, None), (b, "good", "maria", T0, None),
                    (b, "defect", "maria", T0 + 3 * s, None), (b, "good", "maria", T0 + s, T0 + 2 * s)]])
            eff = effective_labels()
            before = dict(conn.execute(select(eff.c.inspection_id, eff.c.label)).all())
        migrate(engine)
        assert rows(engine) == [(a, "good", "maria", False), (a, "good", "maria", True), (a, "good", "olek", True),
                                (b, "good", "maria", False), (b, "defect", "maria", True),
                                (b, "good", "maria", False)]
        with engine.connect() as conn:
            revoked = conn.execute(select(Label.revoked_at).order_by(Label.id)).scalars().all()
            assert dict(conn.execute(select(eff.c.inspection_id, eff.c.label)).all()) == before == \
                {a: "good", b: "defect"}
        # superseded at the moment the newer label was made
        assert [r.replace(tzinfo=dt.UTC) if r and r.tzinfo is None else r for r in revoked] == \
            [T0 + s, None, None, T0 + 3 * s, None, T0 + 2 * s]
    finally:
        engine.dispose()


def test_a_downgrade_below_0004_keeps_every_label(database_url):
    """0004's downgrade drops a column of ``inspections``: done by copying the table, SQLite's DROP TABLE of the
    original would delete every label through ON DELETE CASCADE."""
    engine = make_engine(database_url)
    try:
        migrate(engine)
        a, b = add_inspections(engine, 2)
        with engine.begin() as conn:
            record_labels(conn, [a], "good", "maria", T0)
            record_labels(conn, [b], "defect", "maria", T0)
        downgrade(database_url, "0003")
        with engine.connect() as conn:
            kept = conn.execute(select(Label.inspection_id, Label.label, Label.operator).order_by(Label.id)).all()
        assert [tuple(r) for r in kept] == [(a, "good", "maria"), (b, "defect", "maria")]
    finally:
        engine.dispose()
