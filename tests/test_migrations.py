"""The Alembic migrations build exactly the schema the code declares (contracts/schema.py), on SQLite and on
PostgreSQL: no table, column or index that one has and the other lacks."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.schema import Base


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
