"""Connecting to the SQL record and writing to it: engines for SQLite and PostgreSQL, Alembic migrations,
and the two idempotent writes the workers use (insert-or-ignore of inspection rows, camera upserts).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, func, text
from sqlalchemy.engine import Connection, Engine

from .schema import Camera

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# How long a write waits for another transaction's lock before it gives up, s: SQLite's busy timeout, and on
# PostgreSQL the lock_timeout of the transactions that lock rows explicitly (an activation of a model version and
# its rollback when the announcement fails: trainer/activation.py lock_product_of).
LOCK_WAIT_S = 30


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode and a busy timeout (:data:`LOCK_WAIT_S`) so several processes
    can share it."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": LOCK_WAIT_S})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size)


ROLLBACK_RULE = ("a release never runs against a newer record: run the newer release, or roll the record back "
                 "with the newer release (`linewatch db downgrade {newest}`) or restore the backup taken before "
                 "its upgrade; upgrading is automatic")


class SchemaVersionError(RuntimeError):
    """The record was stamped by a newer linewatch release: its Alembic revision is one this release does not
    know. The message is one line naming both revisions and the rollback rule (:data:`ROLLBACK_RULE`)."""

    def __init__(self, record: str, newest: str):
        self.record, self.newest = record, newest
        super().__init__(f"the record is at schema revision {record!r}, which this release does not know (its "
                         f"newest is {newest!r}): {ROLLBACK_RULE.format(newest=newest)}")


class DowngradeRefused(RuntimeError):
    """A migration's downgrade refused to run: the older schema could not hold the record's rows without mixing or
    losing them (e.g. 0007 with rows of products other than ``default``). Nothing was changed; the message says why."""


def _alembic_config():
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def check_schema(conn: Connection) -> None:
    """Refuse a record at an Alembic revision this release lacks (a newer release upgraded it).

    A record with no ``alembic_version`` yet (new) or at a known revision passes; an older one is brought up
    to date by :func:`migrate`.

    Raises:
        SchemaVersionError: the record's revision is not one of this release's migrations.
    """
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    for current in MigrationContext.configure(conn).get_current_heads():
        if current not in known:
            raise SchemaVersionError(current, ", ".join(script.get_heads()))


def refuse_newer_record(url: str) -> None:
    """:func:`check_schema` on a connection of its own, for a command that must not start anything (create
    topics, load a model) on a record stamped by a newer release.

    Raises:
        SchemaVersionError: see :func:`check_schema`. sqlalchemy.exc.OperationalError: the record does not answer.
    """
    engine = make_engine(url, pool_size=1)
    try:
        with engine.connect() as conn:
            check_schema(conn)
    finally:
        engine.dispose()


def migrate(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the database schema to ``revision`` with the Alembic migrations.

    Idempotent and safe when several workers start at once: PostgreSQL serialises them with an
    advisory lock, SQLite with a lock file beside the database. All the steps run in one transaction: a step that
    fails leaves the record at the revision it had.

    Raises:
        SchemaVersionError: the record is at a revision this release does not know (see :func:`check_schema`).
        sqlalchemy.exc.DBAPIError: a step failed (nothing of this upgrade is kept); on SQLite also another
            process's write held the record's write lock longer than :data:`LOCK_WAIT_S` (every call takes it, up
            to date or not: 'database is locked').
    """
    from alembic import command

    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    config = _alembic_config()
    with _migration_transaction(engine) as conn:
        check_schema(conn)
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def downgrade(url: str, revision: str) -> None:
    """Take the schema back to ``revision`` with this release's migrations (``linewatch db downgrade``), so that
    an older release can run on the record. Columns and tables newer than ``revision`` are dropped with their
    data.

    Raises:
        alembic.util.CommandError: a revision it does not know. DowngradeRefused: a migration's downgrade refused
            (nothing changed).
    """
    from alembic import command

    engine = make_engine(url)
    config = _alembic_config()
    try:
        with _migration_transaction(engine) as conn:
            config.attributes["connection"] = conn
            command.downgrade(config, revision)
    finally:
        engine.dispose()


@contextlib.contextmanager
def _migration_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction for all the steps of an upgrade or a downgrade, one migration at a time: a step that fails
    (or a downgrade refused by an older step) leaves the record as it was, at its revision.

    Python's sqlite3 (3.11) runs DDL outside any transaction until a DML statement opens one, so without the
    explicit ``BEGIN`` a failed step would keep the earlier steps' ``ADD COLUMN``/``DROP INDEX`` done under the old
    revision, and the next try would fail on them. ``BEGIN IMMEDIATE`` takes the write lock at once, waiting out the
    busy timeout for another process's write: a deferred ``BEGIN`` would read the revision first, and the step from
    that read to the first write fails at once ('database is locked') when another process wrote in between.
    PostgreSQL's DDL is transactional already; its advisory lock serialises workers starting at once, as the lock
    file does for SQLite."""
    with _migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7419032)"))
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        yield conn


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:":
        yield
        return
    with open(f"{database}.migrate.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def insert_ignore_duplicates(conn: Connection, table: Any, rows: Iterable[Mapping[str, Any]],
                             keys: list[str], where: Any = None) -> set[tuple]:
    """INSERT rows, silently skipping any whose ``keys`` already exist; returns the ``keys`` values of the rows
    this statement created (``RETURNING``), so a caller knows which were new and which redelivered.
    ``where``: the predicate of a partial unique index on ``keys`` (both databases need it to find the index).

    Raises:
        NotImplementedError: a database other than PostgreSQL or SQLite.
        sqlalchemy.exc.DBAPIError: the database refused the statement (see its subclasses).
    """
    rows = list(rows)
    if not rows:
        return set()
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise NotImplementedError(f"{conn.dialect.name} is not supported: use PostgreSQL or SQLite")
    columns = [table.c[k] for k in keys]
    stmt = insert(table).on_conflict_do_nothing(index_elements=keys, index_where=where).returning(*columns)
    # SQLAlchemy 2 runs an executemany INSERT ... RETURNING as batched multi-row statements ("insertmanyvalues")
    return {tuple(r) for r in conn.execute(stmt, rows)}


def upsert_cameras(conn: Connection, seen: Mapping[str, tuple[str, dt.datetime]]) -> None:
    """Record cameras (camera_id -> (line_id, last seen)), keeping first_seen and the latest last_seen."""
    if not seen:
        return
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    table = Camera.__table__
    stmt = insert(table).values(
        [{"camera_id": c, "line_id": line, "first_seen": t, "last_seen": t} for c, (line, t) in seen.items()]
    )
    greatest = func.greatest if conn.dialect.name == "postgresql" else func.max
    stmt = stmt.on_conflict_do_update(
        index_elements=["camera_id"],
        set_={"line_id": stmt.excluded.line_id, "last_seen": greatest(table.c.last_seen, stmt.excluded.last_seen)},
    )
    conn.execute(stmt)
