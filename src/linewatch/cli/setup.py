"""``linewatch setup``, ``topics`` and ``db upgrade``: the deployment's first step, the Kafka topics and the SQL
schema (each idempotent)."""

from __future__ import annotations

import typer

from .options import load_settings

db_app = typer.Typer(help="The SQL store.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the database schema (Alembic migrations)."""
    from linewatch.contracts.database import migrate

    s = load_settings()
    migrate(s.database_url)
    typer.echo(f"database schema up to date ({_redact(s.database_url)})")


def setup() -> None:
    """Create the Kafka topics and bring the SQL schema up to date (idempotent; the deployment's first step)."""
    topics()
    db_upgrade()


def topics() -> None:
    """Create the Kafka topics with their partition counts and size limits (idempotent)."""
    from linewatch.contracts.kafka import ensure_topics

    s = load_settings()
    ensure_topics(s.kafka)
    k = s.kafka
    typer.echo(f"topics ready: {k.frames_topic}, {k.dead_letter_topic}, {k.inspections_topic}, {k.models_topic}")


def _redact(url: str) -> str:
    """``url`` with its password hidden, for printing."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
