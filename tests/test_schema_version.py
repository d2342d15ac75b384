"""A record stamped by a newer release (field case c24): every command that opens it stops with one line naming
both revisions and the rollback rule, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import text

from linewatch.cli.embedded import free_port
from linewatch.contracts import database
from linewatch.contracts.database import make_engine, migrate

pytestmark = pytest.mark.services

FUTURE = "ffff_future"


@pytest.fixture(params=["sqlite", "postgresql"])
def record_url(request, tmp_path):
    """A fresh record: a SQLite file, or a PostgreSQL schema of its own (so the shared test database is never
    stamped with a future revision)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'linewatch.db'}"
        return
    base = request.getfixturevalue("postgres_server").url
    schema = f"c24_{uuid.uuid4().hex[:8]}"
    admin = make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _stamp(url: str, revision: str) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def _linewatch(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linewatch", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env}, stdin=subprocess.DEVNULL)


def test_c24_a_newer_record_stops_every_command_with_one_line(record_url, apache_kafka, quick_model, tmp_path):
    migrate(record_url)
    newest = ScriptDirectory.from_config(database._alembic_config()).get_current_head()
    _stamp(record_url, FUTURE)
    env = {"LINEWATCH_DATABASE__URL": record_url, "LINEWATCH_STATE_DIR": str(tmp_path / "state"),
           "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": apache_kafka.bootstrap_servers,
           "LINEWATCH_KAFKA__TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}", "LINEWATCH_DETECTOR__DEVICE": "cpu"}
    # one command of each way into the record: the registry's commands (model ..., retrain) share `model list`'s
    commands = [["model", "list"], ["db", "upgrade"], ["setup"], ["trainer"], ["dashboard", "--port", str(free_port())],
                ["detect", "--model", str(quick_model.model_dir), "--threads", "1"]]
    # All at once: each is a Python start-up (most of its time) that refuses the record before writing to it.
    started = time.monotonic()
    with ThreadPoolExecutor(len(commands)) as pool:
        results = list(pool.map(lambda args: _linewatch(env, *args), commands))
    print(f"{len(commands)} commands ended in {time.monotonic() - started:.1f} s")
    for args, result in zip(commands, results, strict=True):
        command = " ".join(args[:2])
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr, command
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (command, lines)
        assert lines[0].startswith("error: the record is at schema revision"), (command, lines)
        assert f"'{FUTURE}'" in lines[0] and f"'{newest}'" in lines[0], (command, lines)
        assert "a release never runs against a newer record" in lines[0], (command, lines)
        assert f"linewatch db downgrade {newest}" in lines[0], (command, lines)

    # nothing was written to the record; stamped back to this release's revision, the commands work again
    engine = make_engine(record_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == FUTURE
    engine.dispose()
    _stamp(record_url, newest)
    result = _linewatch(env, "model", "list")
    assert (result.returncode, result.stdout.strip()) == \
        (0, "no model versions registered for the product default"), result.stderr
