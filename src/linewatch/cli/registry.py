"""``linewatch model ...``: the model registry (versions, activation, rollback) and its training jobs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from .errors import fail
from .options import load_settings

model_app = typer.Typer(help="The model registry: versions, activation, rollback, training jobs.",
                        no_args_is_help=True)


def open_registry():
    """The registry of the configured SQL store (schema brought up to date) and artifact store."""
    from linewatch.contracts.database import make_engine, migrate
    from linewatch.trainer.registry import ModelRegistry

    s = load_settings()
    engine = make_engine(s.database_url)
    migrate(engine)
    return ModelRegistry.for_settings(s, engine)


def job_line(job) -> str:
    """One line of a training job's progress (``model jobs``, ``retrain --wait``)."""
    epoch = f" epoch {job.epoch}/{job.epochs}" if job.epoch is not None and job.epochs else ""
    loss = f" loss {job.loss:.4f}" if job.loss is not None else ""
    eta = f" {job.eta_s:.0f} s left" if job.eta_s else ""
    outcome = f" -> {job.candidate_version}" if job.candidate_version else ""
    error = f" error: {job.error.splitlines()[0]}" if job.error else ""
    return f"job {job.id} [{job.status}] {job.stage or ''}{epoch}{loss}{eta}{outcome}{error}"


@model_app.command("list")
def model_list() -> None:
    """All versions, newest last."""
    rows = open_registry().list()
    if not rows:
        typer.echo("no model versions registered")
    for r in rows:
        when = r.activated_at.strftime("%Y-%m-%d %H:%M") if r.activated_at else ""
        typer.echo(f"{r.version:<6} {r.status:<10} {r.backbone:<20} parent {r.parent_version or '-':<6} "
                   f"created {r.created_at:%Y-%m-%d %H:%M}  "
                   f"{('activated ' + when + ' by ' + str(r.activated_by)) if when else ''}")


@model_app.command("show")
def model_show(version: str) -> None:
    """One version with its metrics and thresholds, as JSON."""
    from linewatch.trainer.registry import RegistryError

    try:
        r = open_registry().get(version)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(json.dumps({c: getattr(r, c) for c in ("version", "status", "parent_version", "backbone", "created_at",
                           "artifact_uri", "thresholds", "metrics", "activated_by", "activated_at", "notes")}
                          | {"training_images": len(r.manifest), "global_branch": _branch_of(r.artifact_uri)},
                          indent=2, default=str))


def _branch_of(artifact_uri: str) -> str:
    """:func:`~linewatch.detector.global_branch.branch_summary` of the version's model.json (the registry's row does
    not hold it), or why it cannot be read."""
    from linewatch.contracts.files import path_of
    from linewatch.detector.global_branch import branch_summary
    from linewatch.detector.model_files import ModelFileError, read_metadata

    try:
        return branch_summary(read_metadata(path_of(artifact_uri)))
    except (ModelFileError, OSError, ValueError) as exc:
        return f"unknown: the model.json at {artifact_uri} cannot be read ({exc})"


@model_app.command("register")
def model_register(
    model_dir: Annotated[Path, typer.Argument(help="a model directory written by linewatch train")],
    activate: Annotated[bool, typer.Option(help="make it the active version at once")] = False,
    by: Annotated[str, typer.Option(help="who registers (recorded)")] = os.environ.get("USER", "cli"),
) -> None:
    """Add a trained model to the registry as the next version (e.g. the first model of a new line)."""
    from linewatch.detector.model_files import ModelFileError, read_metadata

    try:
        read_metadata(model_dir)
    except ModelFileError as exc:
        fail(str(exc))
    registry = open_registry()
    row = registry.use(model_dir, by) if activate else registry.register(model_dir, notes=f"registered by {by}")
    typer.echo(f"{row.version} registered ({row.status})")


@model_app.command("activate")
def model_activate(version: str, by: Annotated[str, typer.Option(help="who activates (recorded)")] =
                   os.environ.get("USER", "cli")) -> None:
    """Make VERSION the active model; the workers switch between two batches."""
    from linewatch.trainer.registry import RegistryError

    try:
        row = open_registry().activate(version, by)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"{row.version} is active")


@model_app.command("rollback")
def model_rollback(by: Annotated[str, typer.Option(help="who rolls back (recorded)")] =
                   os.environ.get("USER", "cli")) -> None:
    """Re-activate the version that was active before the current one."""
    from linewatch.trainer.registry import RegistryError

    try:
        row = open_registry().rollback(by)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"rolled back: {row.version} is active")


@model_app.command("reannounce")
def model_reannounce(by: Annotated[str, typer.Option(help="who re-announces (recorded)")] =
                     os.environ.get("USER", "cli")) -> None:
    """Announce the active version to the workers again (after an announcement that failed)."""
    from linewatch.trainer.registry import RegistryError

    try:
        row = open_registry().reannounce(by)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"{row.version} announced again")


@model_app.command("jobs")
def model_jobs(limit: Annotated[int, typer.Option(min=1)] = 10) -> None:
    """Recent training jobs with their progress."""
    from linewatch.trainer import job_queue as jobs

    rows = jobs.recent_jobs(open_registry().engine, limit)
    if not rows:
        typer.echo("no training jobs yet")
    for job in rows:
        typer.echo(job_line(job))
