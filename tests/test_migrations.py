"""The Alembic migrations build exactly the schema the code declares (contracts/schema.py), on SQLite and on
PostgreSQL: no table, column or index that one has and the other lacks; migration 0007 (products) keeps every
existing row as the product ``default``."""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import insert, inspect, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from linewatch.contracts.database import DowngradeRefused, downgrade, make_engine, migrate
from linewatch.contracts.schema import Base, CameraProduct, Inspection, Label, ModelVersion, TrainingJob


def _differences(url: str) -> list:
    engine = make_engine(url)
    migrate(engine)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()


def test_migrations_match_the_declared_schema_on_sqlite(tmp_path):
    assert _differences(f"sqlite:///{tmp_path / 'record.db'}") == []


@pytest.mark.services
def test_migrations_match_the_declared_schema_on_postgresql(postgres_server):
    assert _differences(postgres_server.fresh_database("migrations")) == []


# ---- 0007: products -------------------------------------------------------------------------------------------

T0 = dt.datetime(2026, 12, 1, 6, 0, tzinfo=dt.UTC)


def _model(version: str, number: int, **extra) -> dict:
    return {"version": version, "number": number, "backbone": "resnet18", "created_at": T0,
            "artifact_uri": f"file:///store/{version}", "manifest": [], "metrics": {}, "thresholds": {},
            "status": "retired", **extra}


def _inspection(frame_id: int) -> dict:
    return {"camera_id": "cam-1", "line_id": "line-1", "frame_id": frame_id, "part_id": None, "captured_at": T0,
            "processed_at": T0, "model_version": "v1", "image_score": 0.5, "normalized_score": 0.5,
            "verdict": "good", "threshold": 1.0, "regions": [], "width": 8, "height": 8, "queue_wait_ms": 0.0,
            "decode_ms": 0.0, "inference_ms": 0.0, "total_ms": 0.0, "worker_id": "w", "image_uri": None,
            "heatmap_uri": None, "kafka_topic": None, "kafka_partition": None, "kafka_offset": None}


def _label(inspection_id: int) -> dict:
    return {"inspection_id": inspection_id, "label": "good", "operator": "maria", "created_at": T0}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def database_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'record.db'}"
    return request.getfixturevalue("postgres_server").fresh_database(f"mig_{abs(hash(request.node.name)) % 10**8}")


def test_0007_existing_rows_become_the_default_product_and_numbers_are_unique_per_product(database_url):
    engine = make_engine(database_url)
    try:
        migrate(engine, "0006")
        with engine.begin() as conn:  # a record as it was before products
            conn.execute(insert(ModelVersion), [_model("v1", 1), _model("v2", 2, status="active")])
            conn.execute(insert(Inspection), [_inspection(1), _inspection(2)])
            conn.execute(insert(Label), [_label(1)])
            conn.execute(insert(TrainingJob), [{"status": "succeeded", "trigger": "manual", "created_at": T0}])
        migrate(engine)
        with engine.begin() as conn:
            m = ModelVersion
            assert conn.execute(select(m.version, m.product, m.number, m.status).order_by(m.number)).all() == \
                [("v1", "default", 1, "retired"), ("v2", "default", 2, "active")]
            assert conn.execute(select(Inspection.product)).scalars().all() == ["default", "default"]
            assert conn.execute(select(TrainingJob.product)).scalars().all() == ["default"]
            # inspections was altered in place: a copy would have taken its labels with it (ON DELETE CASCADE)
            assert conn.execute(select(Label.inspection_id, Label.operator)).all() == [(1, "maria")]
            # another product counts its own versions from 1 ...
            conn.execute(insert(ModelVersion), [_model("bottle/v1", 1, product="bottle"),
                                                _model("bottle/v2", 2, product="bottle")])
            conn.execute(insert(CameraProduct), [{"camera_id": "cam-1", "since": T0, "product": "bottle",
                                                  "set_by": "maria"}])
            assert conn.execute(select(CameraProduct.product, CameraProduct.since)).one() == ("bottle", T0)
        # ... and never twice
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(insert(ModelVersion), [_model("bottle/v2-again", 2, product="bottle")])
        # an older release could not tell the products apart: the downgrade refuses and changes nothing
        with pytest.raises(DowngradeRefused, match="2 models rows"):
            downgrade(database_url, "0006")
        # the command says so in one line, without a traceback
        env = {**os.environ, "LINEWATCH_DATABASE__URL": database_url}
        refused = subprocess.run([sys.executable, "-m", "linewatch", "db", "downgrade", "0006"], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
        assert refused.stderr.startswith("error: cannot downgrade below 0007: 2 models rows belong to products")
        # and both refusals left the record whole: 0008's index is still there (SQLite included)
        assert "uq_models_one_active_per_product" in {i["name"] for i in inspect(engine).get_indexes("models")}
        with engine.connect() as conn:
            assert conn.execute(select(ModelVersion.product).where(ModelVersion.version == "bottle/v1")).scalar() == \
                "bottle"
    finally:
        engine.dispose()


def test_0007_downgrades_a_record_of_the_default_product_only(database_url):
    engine = make_engine(database_url)
    try:
        migrate(engine)
        with engine.begin() as conn:
            conn.execute(insert(ModelVersion), [_model("v1", 1)])
            conn.execute(insert(Inspection), [_inspection(1)])
            conn.execute(insert(Label), [_label(1)])
        downgrade(database_url, "0006")
        with engine.begin() as conn:
            assert conn.execute(select(ModelVersion.__table__.c.version)).scalars().all() == ["v1"]
            assert conn.execute(select(Label.inspection_id, Label.operator)).all() == [(1, "maria")]
            assert "product" not in [c["name"] for c in inspect(conn).get_columns("models")]
        migrate(engine)
        assert _differences(database_url) == []
    finally:
        engine.dispose()


def test_an_upgrade_whose_step_fails_leaves_the_record_at_its_revision(database_url):
    """0007 adds the product columns, rebuilds ``models`` and then creates an index: with that index's name taken,
    the upgrade fails at its last step, and none of its earlier steps may stay done (on SQLite, Python's sqlite3
    ran the ``ADD COLUMN``s outside the transaction, and the next upgrade failed on 'duplicate column name')."""
    engine = make_engine(database_url)
    try:
        migrate(engine, "0006")
        with engine.begin() as conn:
            conn.execute(insert(ModelVersion), [_model("v1", 1)])
            conn.exec_driver_sql("CREATE INDEX ix_inspections_product_time ON cameras (line_id)")  # the name taken
        with pytest.raises(DBAPIError, match="ix_inspections_product_time"):
            migrate(engine)
        with engine.begin() as conn:
            assert MigrationContext.configure(conn).get_current_heads() == ("0006",)
            for table in ("models", "inspections", "training_jobs"):
                assert "product" not in [c["name"] for c in inspect(conn).get_columns(table)], table
            assert conn.execute(select(ModelVersion.__table__.c.version)).scalars().all() == ["v1"]
            conn.exec_driver_sql("DROP INDEX ix_inspections_product_time")
        migrate(engine)  # the same upgrade, once the name is free
        assert _differences(database_url) == []
    finally:
        engine.dispose()


# ---- 0008: one active model version per product ------------------------------------------------------------------

def test_0008_keeps_the_last_activated_of_several_active_versions_and_then_allows_one(database_url, caplog):
    engine = make_engine(database_url)
    try:
        migrate(engine, "0007")
        with engine.begin() as conn:  # what two activations at once could leave before 0008
            conn.execute(insert(ModelVersion), [_model(v, n, product=p, status=st, activated_at=at, notes=notes)
                                                for v, n, p, st, at, notes in [
                ("v1", 1, "default", "active", T0, None),
                ("v2", 2, "default", "active", T0 + dt.timedelta(hours=1), "trained on 40"),
                ("v3", 3, "default", "active", None, None),
                ("bottle/v1", 1, "bottle", "active", T0, None),
                ("bottle/v2", 2, "bottle", "candidate", None, None)]])
        with caplog.at_level("WARNING"):
            migrate(engine)
        with engine.begin() as conn:
            m = ModelVersion
            rows = {r.version: r for r in conn.execute(select(m.version, m.status, m.notes))}
        assert {v: r.status for v, r in rows.items()} == {"v1": "retired", "v2": "active", "v3": "retired",
                                                         "bottle/v1": "active", "bottle/v2": "candidate"}
        assert rows["v2"].notes == "trained on 40" and rows["bottle/v1"].notes is None  # the kept ones unchanged
        for retired in ("v1", "v3"):
            assert "3 versions of default were active at once; v2, the last activated (the highest number where " \
                "none has a time), stays active" in rows[retired].notes
        assert "product default had 3 active model versions: v2 stays active, v1, v3 retired; announce it to the " \
            "workers again: linewatch model reannounce --product default" in caplog.text
        (index,) = [i for i in inspect(engine).get_indexes("models") if i["name"] == "uq_models_one_active_per_product"]
        where = index["dialect_options"][f"{engine.dialect.name}_where"]  # compare_metadata does not compare it
        assert (index["column_names"], index["unique"]) == (["product"], True)
        assert re.sub(r"[()\s]|::text", "", str(where)) == "status='active'"
        # from now on the record itself refuses a second active version of a product, and only of the same product
        with pytest.raises(IntegrityError), engine.begin() as conn:
            conn.execute(update(ModelVersion).where(ModelVersion.version == "v1").values(status="active"))
        with engine.begin() as conn:
            conn.execute(update(ModelVersion).where(ModelVersion.version == "bottle/v1").values(status="retired"))
            conn.execute(update(ModelVersion).where(ModelVersion.version == "bottle/v2").values(status="active"))
        downgrade(database_url, "0007")  # the index only
        with engine.begin() as conn:
            conn.execute(update(ModelVersion).where(ModelVersion.version == "v1").values(status="active"))
    finally:
        engine.dispose()
