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


def make_engine(url: str, pool_size: int = 5) -> Engine:
    """An engine for ``url``; SQLite gets WAL mode and a busy timeout so several processes can share it."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=pool_size)


def migrate(url_or_engine: str | Engine, revision: str = "head") -> None:
    """Bring the database schema to ``revision`` with the Alembic migrations.

    Idempotent and safe when several workers start at once: PostgreSQL serialises them with an
    advisory lock, SQLite with a lock file beside the database.
    """
    from alembic import command
    from alembic.config import Config

    engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with _migration_lock(engine), engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(7419032)"))
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


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
                             keys: list[str]) -> set[tuple]:
    """INSERT rows, silently skipping any whose ``keys`` already exist; returns the ``keys`` values of the rows
    this statement created (``RETURNING``), so a caller knows which were new and which redelivered.

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
    stmt = insert(table).on_conflict_do_nothing(index_elements=keys).returning(*columns)
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
