"""``linewatch trainer`` and ``retrain``: the retraining service, and a retraining asked for by hand."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from .errors import fail
from .options import load_settings
from .registry import job_line, open_registry


def trainer(
    run_job: Annotated[int | None, typer.Option("--run-job", hidden=True, help="run one claimed job and exit")] = None,
) -> None:
    """Run the retraining service: retrains on operator-confirmed good frames and rolls out better models."""
    from linewatch.trainer.service import run_trainer

    raise typer.Exit(run_trainer(load_settings(), run_job))


def retrain(
    product: Annotated[str, typer.Option("--product", "-p", help="the product (part type) to retrain")] = "default",
    from_scratch: Annotated[bool, typer.Option(
        help="train a new student instead of fine-tuning the product's active one")] = False,
    by: Annotated[str, typer.Option(help="who asks (recorded)")] = os.environ.get("USER", "cli"),
    wait: Annotated[bool, typer.Option(help="follow the job's progress until it ends")] = False,
) -> None:
    """Ask the trainer service for a retraining of a product now, on that product's confirmed goods (one
    unfinished job per product: that product's unfinished job is reused; other products' jobs do not matter)."""
    import time

    from linewatch.contracts.products import ProductError, check_product
    from linewatch.trainer import job_queue as jobs

    try:
        check_product(product)
    except ProductError as exc:
        fail(str(exc))
    registry = open_registry()
    if not from_scratch and registry.active(product) is None:
        fail(f"no active model version of the product {product} to fine-tune: register one with `linewatch model "
             f"register DIR --product {product} --activate`, or pass --from-scratch")
    engine = registry.engine
    job_id = jobs.request_job(engine, "manual", requested_by=by, from_scratch=from_scratch, product=product)
    typer.echo(f"training job {job_id} of {product} queued; the trainer service (`linewatch trainer`) runs it")
    # A live trainer claims a queued job within one poll once it runs no other job (one at a time, of any
    # product): a job still queued a few polls after the last running one ended means no trainer is running.
    patience_s = 3 * load_settings().trainer.poll_s + 5
    waited_from = time.monotonic()
    while wait:
        job = jobs.get_job(engine, job_id)
        ahead = jobs.running_job(engine) if job.status == "queued" else None
        if ahead is not None:
            waited_from = time.monotonic()
        typer.echo(f"\r{job_line(job)}" + (f" (after job {ahead.id} of {ahead.product})" if ahead else ""), nl=False)
        if job.status in ("succeeded", "failed"):
            typer.echo()
            raise typer.Exit(0 if job.status == "succeeded" else 1)
        if job.status == "queued" and time.monotonic() - waited_from > patience_s:
            typer.echo()
            fail(f"no trainer has taken job {job_id} in {patience_s:.0f} s: is `linewatch trainer` running? "
                 "The job stays queued for the next trainer that starts.", code=1)
        time.sleep(2)
