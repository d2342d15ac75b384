"""The ``linewatch`` command: one subcommand per job.

This module only assembles the app: the global options, then the commands in the order ``linewatch --help``
lists them. Each family of commands has its module:

* :mod:`.modelling` -- ``train``, ``eval``, ``score``, ``export``
* :mod:`.stream` -- ``ingest``, ``detect``
* :mod:`.retraining` -- ``trainer``, ``retrain``
* :mod:`.services` -- ``up`` (run by :mod:`.up` on the services of :mod:`.embedded`), ``dashboard``
* :mod:`.setup` -- ``setup``, ``topics``, ``db upgrade|downgrade``
* :mod:`.registry` -- ``model list|show|register|activate|rollback|jobs``
* :mod:`.cameras` -- ``camera product|history`` (changeovers: which product a camera shows)
* :mod:`.accounts` -- ``operator add|remove|list``

beside :mod:`.errors` (the one-line error reports) and :mod:`.options` (options and settings helpers the
commands share). Command modules never import this one. Service modules are imported inside each command, so
``linewatch --help`` stays fast and a command loads only what its service needs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from linewatch.contracts.settings import CONFIG_ENV, get_settings
from linewatch.contracts.settings_check import unknown_settings

from . import accounts, cameras, modelling, registry, retraining, services, setup, stream
from .errors import service_errors
from .options import load_settings

app = typer.Typer(
    name="linewatch",
    help="Real-time visual quality control: STPM anomaly detection on camera streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def run() -> None:
    """The console entry point: the app, with the service errors an operator can fix (no broker
    configured or reachable, Redis or the SQL store down, a state folder that cannot be made) reported
    in one line, exit status 2, instead of a traceback."""
    with service_errors():
        app()


# Commands that open the record (the SQL store): the embedded SQLite file is created on first use.
RECORD_COMMANDS = {"detect", "trainer", "retrain", "up", "dashboard", "setup", "model", "camera", "db"}


@app.callback()
def main(
    ctx: typer.Context,
    config: Annotated[
        Path | None, typer.Option("--config", help=f"TOML settings file (also ${CONFIG_ENV})", exists=True)
    ] = None,
) -> None:
    if config is not None:
        os.environ[CONFIG_ENV] = str(config.resolve())  # child processes read the same file
    for name in unknown_settings():
        typer.secho(f"warning: {name} is not a linewatch setting and is ignored", err=True, fg=typer.colors.YELLOW)
    get_settings.cache_clear()
    from linewatch.observability import configure_logging

    settings = load_settings()
    configure_logging(settings.log_format, settings.log_level)
    if ctx.invoked_subcommand in RECORD_COMMANDS and not settings.database.url:
        _name_the_record(settings.state_dir.resolve(), settings.sqlite_path)


def _name_the_record(state_dir: Path, record: Path) -> None:
    """Say which state folder a command uses, and loudly when its record does not exist yet: a command run
    from another folder would otherwise start a new, empty record beside the real one without a word."""
    if record.exists():
        typer.secho(f"state folder: {state_dir}", err=True, fg=typer.colors.BRIGHT_BLACK)
    else:
        typer.secho(f"note: no record in {state_dir} (state folder): a new, empty one is created there. To use "
                    "an existing one, run from the folder that holds it or set LINEWATCH_STATE_DIR.", err=True,
                    fg=typer.colors.YELLOW)


# `linewatch --help` lists the commands in this order, then the command groups.
app.command()(modelling.train)
app.command("eval")(modelling.evaluate)
app.command()(modelling.score)
app.command()(modelling.export)
app.command("fit-global")(modelling.fit_global)
app.command()(stream.ingest)
app.command()(stream.detect)
app.command()(retraining.trainer)
app.command()(retraining.retrain)
app.command()(services.up)
app.command()(services.dashboard)
app.command()(setup.setup)
app.command()(setup.topics)
app.add_typer(registry.model_app, name="model")
app.add_typer(cameras.camera_app, name="camera")
app.add_typer(accounts.operator_app, name="operator")
app.add_typer(setup.db_app, name="db")
