"""``linewatch setup``, ``topics``, ``db upgrade`` and ``db downgrade``: the deployment's first step, the Kafka
topics and the SQL schema (each idempotent), and the schema's way back for an older release."""

from __future__ import annotations

import typer

from .errors import fail
from .options import load_settings

db_app = typer.Typer(help="The SQL store.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the database schema (Alembic migrations)."""
    from linewatch.contracts.database import migrate

    s = load_settings()
    migrate(s.database_url)
    typer.echo(f"database schema up to date ({_redact(s.database_url)})")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Take the schema back to REVISION, so that an older release can run on the record (drops what is newer).

    Run it with the newer release: only it knows how to undo its own migrations.
    """
    from alembic.util import CommandError

    from linewatch.contracts.database import DowngradeRefused, downgrade

    s = load_settings()
    try:
        downgrade(s.database_url, revision)
    except (CommandError, DowngradeRefused) as exc:
        fail(str(exc))
    typer.echo(f"database schema at revision {revision} ({_redact(s.database_url)})")


def setup() -> None:
    """Bring the SQL schema up to date and create the Kafka topics (idempotent; the deployment's first step).

    The schema comes first: a record stamped by a newer release stops the command before anything is made."""
    db_upgrade()
    topics()


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
