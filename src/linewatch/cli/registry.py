"""``linewatch model ...``: the model registry (versions, activation, rollback) and its training jobs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from .errors import fail
from .options import load_settings

model_app = typer.Typer(help="The model registry: versions, activation, rollback, training jobs; each product's "
                        "versions apart (bottle/v3; v3 is the product 'default').", no_args_is_help=True)

# The product a command acts on; "default" is the product of everything recorded before products existed.
Product = Annotated[str, typer.Option("--product", "-p", help="the product (part type); 'all': every product "
                                      "(list and jobs only)")]


def open_registry():
    """The registry of the configured SQL store (schema brought up to date) and artifact store."""
    from linewatch.contracts.database import make_engine, migrate
    from linewatch.trainer.registry import ModelRegistry

    s = load_settings()
    engine = make_engine(s.database_url)
    migrate(engine)
    return ModelRegistry.for_settings(s, engine)


def job_line(job) -> str:
    """One line of a training job's product and progress (``model jobs``, ``retrain --wait``)."""
    epoch = f" epoch {job.epoch}/{job.epochs}" if job.epoch is not None and job.epochs else ""
    loss = f" loss {job.loss:.4f}" if job.loss is not None else ""
    eta = f" {job.eta_s:.0f} s left" if job.eta_s else ""
    outcome = f" -> {job.candidate_version}" if job.candidate_version else ""
    error = f" error: {job.error.splitlines()[0]}" if job.error else ""
    return f"job {job.id} {job.product} [{job.status}] {job.stage or ''}{epoch}{loss}{eta}{outcome}{error}"


@model_app.command("list")
def model_list(product: Product = "default") -> None:
    """The versions of a product (default: 'default'; 'all': every product), newest last."""
    from linewatch.contracts.products import ALL_PRODUCTS
    from linewatch.trainer.registry import RegistryError

    try:
        rows = open_registry().list(None if product == ALL_PRODUCTS else product)
    except RegistryError as exc:
        fail(str(exc))
    if not rows:
        typer.echo("no model versions registered" + ("" if product == ALL_PRODUCTS else f" for the product {product}"))
    width = max([6, *(len(r.version) for r in rows)])
    for r in rows:
        when = r.activated_at.strftime("%Y-%m-%d %H:%M") if r.activated_at else ""
        typer.echo(f"{r.version:<{width}} {r.status:<10} {r.backbone:<20} parent {r.parent_version or '-':<{width}} "
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
    product: Product = "default",
) -> None:
    """Add a trained model to the registry as the next version of its product (e.g. the first model of a new line)."""
    from linewatch.contracts.products import ProductError, check_product
    from linewatch.detector.model_files import ModelFileError, read_metadata

    try:
        read_metadata(model_dir)
        check_product(product)
    except (ModelFileError, ProductError) as exc:
        fail(str(exc))
    registry = open_registry()
    row = registry.use(model_dir, by, product) if activate else registry.register(
        model_dir, notes=f"registered by {by}", product=product)
    typer.echo(f"{row.version} registered ({row.status})")


@model_app.command("activate")
def model_activate(version: Annotated[str, typer.Argument(help="PRODUCT/vN (bottle/v3), or vN of the product "
                                                            "'default'")],
                   by: Annotated[str, typer.Option(help="who activates (recorded)")] = os.environ.get("USER", "cli"),
                   ) -> None:
    """Make VERSION the active model of its product (no other product's changes); the workers switch between two
    batches."""
    from linewatch.trainer.registry import RegistryError

    try:
        row = open_registry().activate(version, by)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"{row.version} is active")


@model_app.command("rollback")
def model_rollback(product: Annotated[str, typer.Argument(help="the product to roll back")] = "default",
                   by: Annotated[str, typer.Option(help="who rolls back (recorded)")] = os.environ.get("USER", "cli"),
                   ) -> None:
    """Re-activate the product's version that was active before its current one (no other product's changes)."""
    from linewatch.trainer.registry import RegistryError

    try:
        row = open_registry().rollback(by, product=product)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"rolled back: {row.version} is active")


@model_app.command("reannounce")
def model_reannounce(by: Annotated[str, typer.Option(help="who re-announces (recorded)")] =
                     os.environ.get("USER", "cli"), product: Product = "default") -> None:
    """Announce the product's active version to the workers again (after an announcement that failed)."""
    from linewatch.trainer.registry import RegistryError

    try:
        row = open_registry().reannounce(by, product=product)
    except RegistryError as exc:
        fail(str(exc))
    typer.echo(f"{row.version} announced again")


@model_app.command("jobs")
def model_jobs(limit: Annotated[int, typer.Option(min=1)] = 10, product: Product = "all") -> None:
    """Recent training jobs with their product and progress (default: of every product)."""
    from linewatch.contracts.products import ALL_PRODUCTS, ProductError, check_product
    from linewatch.trainer import job_queue as jobs

    try:
        only = None if product == ALL_PRODUCTS else check_product(product)
    except ProductError as exc:
        fail(str(exc))
    rows = jobs.recent_jobs(open_registry().engine, limit, only)
    if not rows:
        typer.echo("no training jobs yet" + ("" if only is None else f" for the product {only}"))
    for job in rows:
        typer.echo(job_line(job))
