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
    from_scratch: Annotated[bool, typer.Option(
        help="train a new student instead of fine-tuning the active one")] = False,
    by: Annotated[str, typer.Option(help="who asks (recorded)")] = os.environ.get("USER", "cli"),
    wait: Annotated[bool, typer.Option(help="follow the job's progress until it ends")] = False,
) -> None:
    """Ask the trainer service for a retraining now (one job at a time: an unfinished job is reused)."""
    import time

    from linewatch.trainer import job_queue as jobs

    registry = open_registry()
    if not from_scratch and registry.active() is None:
        fail("no active model version to fine-tune: register one with `linewatch model register DIR --activate`, "
             "or pass --from-scratch")
    engine = registry.engine
    job_id = jobs.request_job(engine, "manual", requested_by=by, from_scratch=from_scratch)
    typer.echo(f"training job {job_id} queued; the trainer service (`linewatch trainer`) runs it")
    # A live trainer claims a queued job within one poll (it runs one job at a time, and an unfinished job is
    # reused, so a job still queued after a few polls means no trainer is running).
    patience_s = 3 * load_settings().trainer.poll_s + 5
    waited_from = time.monotonic()
    while wait:
        job = jobs.get_job(engine, job_id)
        typer.echo(f"\r{job_line(job)}", nl=False)
        if job.status in ("succeeded", "failed"):
            typer.echo()
            raise typer.Exit(0 if job.status == "succeeded" else 1)
        if job.status == "queued" and time.monotonic() - waited_from > patience_s:
            typer.echo()
            fail(f"no trainer has taken job {job_id} in {patience_s:.0f} s: is `linewatch trainer` running? "
                 "The job stays queued for the next trainer that starts.", code=1)
        time.sleep(2)
