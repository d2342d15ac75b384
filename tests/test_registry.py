"""The model registry under concurrent registrations (field case c23), on PostgreSQL and on SQLite."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from linewatch.contracts import database
from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.files import sha256_file
from linewatch.contracts.schema import ModelVersion
from linewatch.detector.model_files import WEIGHTS_FILE, read_metadata
from linewatch.trainer.activation import RegistryError
from linewatch.trainer.registry import ModelRegistry, artifact_path

from pipeline_harness import other_model

REPETITIONS = 20
ROUNDS = 20  # activations at once


@pytest.fixture(params=["postgresql", "sqlite"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'linewatch.db'}"
    return request.getfixturevalue("postgres_server").url


def _register_many(path: str, model_dir: str, barrier, results) -> None:
    """A child process: ``REPETITIONS`` registrations, each started together with the other process's.

    ``path`` is the trainer's (``ModelRegistry.register`` as the training job calls it) or the command's
    (``linewatch model register``'s function, with its own engine and migration run, as the CLI does).
    """
    from linewatch.cli.registry import model_register
    from linewatch.contracts.settings import get_settings

    s = get_settings()
    registry = ModelRegistry(make_engine(s.database_url), s.artifact_store_root, None)
    for i in range(REPETITIONS):
        barrier.wait(timeout=120)
        try:
            if path == "trainer":
                row = registry.register(Path(model_dir), parent=None, metrics={"review_set": {"frames": i}},
                                        notes="trainer")
                results.put((path, i, row.version, None))
            else:
                model_register(Path(model_dir), activate=False, by="cli")
                results.put((path, i, None, None))
        except BaseException as exc:  # noqa: BLE001 -- reported to the test, which fails on it
            results.put((path, i, None, f"{type(exc).__name__}: {exc}"))


@pytest.mark.services
def test_c23_two_registrations_at_once_never_mix_rows_and_files(database_url, quick_model, tmp_path, monkeypatch):
    model_a = quick_model.model_dir
    model_b = other_model(model_a, tmp_path / "model-b")
    sha = {"trainer": sha256_file(model_a / WEIGHTS_FILE), "cli": sha256_file(model_b / WEIGHTS_FILE)}
    assert sha["trainer"] != sha["cli"]
    thresholds = {"trainer": read_metadata(model_a)["thresholds"], "cli": read_metadata(model_b)["thresholds"]}
    engine = make_engine(database_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM models")
    state = tmp_path / "state"
    monkeypatch.setenv("LINEWATCH_DATABASE__URL", database_url)
    monkeypatch.setenv("LINEWATCH_STATE_DIR", str(state))
    monkeypatch.setenv("LINEWATCH_KAFKA__BOOTSTRAP_SERVERS", "")

    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=_register_many, args=(path, str(model), barrier, results))
             for path, model in (("trainer", model_a), ("cli", model_b))]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=600) for _ in range(2 * REPETITIONS)]
    for p in procs:
        p.join(60)
    assert [o for o in outcomes if o[3]] == []  # no registration failed
    assert [p.exitcode for p in procs] == [0, 0]

    with Session(engine) as s:
        rows = list(s.scalars(select(ModelVersion).order_by(ModelVersion.number)))
    assert [r.version for r in rows] == [f"v{n}" for n in range(1, 2 * REPETITIONS + 1)]
    by_notes = {"trainer": [r for r in rows if r.notes == "trainer"],
                "cli": [r for r in rows if r.notes == "registered by cli"]}
    assert [len(v) for v in by_notes.values()] == [REPETITIONS, REPETITIONS]
    assert {o[2] for o in outcomes if o[0] == "trainer"} == {r.version for r in by_notes["trainer"]}
    for path, registered in by_notes.items():
        for row in registered:
            folder = artifact_path(row)
            meta = read_metadata(folder)
            # the row's model is the model in its folder: weights, their recorded SHA-256, version, thresholds
            assert sha256_file(folder / WEIGHTS_FILE) == row.weights_sha256 == meta["weights_sha256"] == sha[path], \
                row.version
            assert meta["version"] == row.version
            assert row.thresholds == meta["thresholds"] == thresholds[path]
    # nothing left in staging, nothing orphaned
    assert sorted(p.name for p in (state / "models").iterdir()) == sorted(r.version for r in rows)
    engine.dispose()


def test_an_incomplete_model_is_refused_and_leaves_nothing(quick_model, sqlite_url, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(quick_model.model_dir, broken)
    weights = broken / WEIGHTS_FILE
    os.truncate(weights, weights.stat().st_size // 2)
    engine = make_engine(sqlite_url)
    migrate(engine)
    registry = ModelRegistry(engine, tmp_path / "models", None)
    with pytest.raises(Exception, match="does not match the SHA-256"):
        registry.register(broken)
    assert registry.list() == [] and list((tmp_path / "models").iterdir()) == []
    assert registry.register(quick_model.model_dir).version == "v1"
    engine.dispose()


@pytest.mark.services
def test_two_activations_at_once_run_one_after_the_other_and_leave_one_active_version(database_url, quick_model,
                                                                                       tmp_path):
    """Two engineers activating two versions of one product at the same moment (two threads, one engine each): each
    transaction retired only what it had read as active, and both committed, leaving two active versions on
    PostgreSQL and none on SQLite. The registry locks the product's rows first, so the two run one after the other:
    both succeed, and every round ends with exactly one active version (and the record would refuse a second:
    migration 0008)."""
    engine = make_engine(database_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM models")
    root = tmp_path / "store"
    registry = ModelRegistry(engine, root, None)
    versions = [registry.register(quick_model.model_dir).version,
                registry.register(other_model(quick_model.model_dir, tmp_path / "model-b")).version]
    engines = [make_engine(database_url) for _ in versions]  # as two processes would have
    barrier = threading.Barrier(2)

    def activate(own: ModelRegistry, version: str, out: list[str]) -> None:
        barrier.wait(timeout=60)
        try:
            out.append(own.activate(version, "erin").version)
        except Exception as exc:  # noqa: BLE001 -- reported by the test
            out.append(f"{type(exc).__name__}: {exc}")

    try:
        for _ in range(ROUNDS):
            out: list[str] = []
            threads = [threading.Thread(target=activate, args=(ModelRegistry(e, root, None), v, out))
                       for e, v in zip(engines, versions, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not any(t.is_alive() for t in threads)
            with Session(engine) as s:
                active = list(s.scalars(select(ModelVersion.version).where(ModelVersion.status == "active")))
            assert sorted(out) == sorted(versions) and len(active) == 1, (active, out)
    finally:
        for e in engines:
            e.dispose()
        engine.dispose()


@pytest.mark.services
def test_an_activation_waits_for_a_held_lock_a_bounded_time_and_changes_nothing(database_url, quick_model, tmp_path,
                                                                                monkeypatch):
    """A transaction left open on the product's rows (a stuck session, a console left in BEGIN) held an activation
    on PostgreSQL without limit. Both databases now give up after ``LOCK_WAIT_S`` (1 s here) with the registry's
    one-line refusal, and the active version stays; once the lock is gone the same activation succeeds."""
    monkeypatch.setattr(database, "LOCK_WAIT_S", 1)
    engine = make_engine(database_url)
    migrate(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM models")
    registry = ModelRegistry(engine, tmp_path / "store", None)
    first = registry.register(quick_model.model_dir).version
    second = registry.register(other_model(quick_model.model_dir, tmp_path / "model-b")).version
    registry.activate(first, "erin")
    holder = make_engine(database_url)
    try:
        with holder.connect() as conn:
            if holder.dialect.name == "sqlite":  # psycopg opens the transaction by itself
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            conn.exec_driver_sql("UPDATE models SET notes = notes")  # the product's rows (SQLite: the whole file)
            started = time.monotonic()
            with pytest.raises(RegistryError, match=f"^{second} was not activated: the registry could not be written"):
                registry.activate(second, "erin")
            waited = time.monotonic() - started
            conn.rollback()
        assert 0.9 < waited < 10, waited
        with Session(engine) as s:
            assert list(s.scalars(select(ModelVersion.version).where(ModelVersion.status == "active"))) == [first]
        assert registry.activate(second, "erin").version == second
    finally:
        holder.dispose()
        engine.dispose()
