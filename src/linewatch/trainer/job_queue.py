"""The training-job queue, in SQL (table ``training_jobs``): requests (CLI, dashboard, trainer triggers),
progress. Shared by the trainer, which runs the jobs, and whoever asks for one or shows them.

A job retrains one product (``training_jobs.product``). Each product has at most one unfinished (queued or
running) job: asking again for the same product returns that job, while another product's unfinished job never
stands in the way. The trainer runs one job at a time, the oldest queued first, whatever its product (a job takes
the host's cores; the products take turns, and since each has at most one job waiting, none waits behind more
than one job of each other product).

Status: queued -> running -> succeeded | failed. A running job whose progress heartbeat
(``updated_at``) is older than ``STALE_AFTER`` belonged to a process that died and is marked failed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from linewatch.contracts.products import DEFAULT_PRODUCT, check_product
from linewatch.contracts.schema import TrainingJob

STALE_AFTER = dt.timedelta(minutes=3)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def request_job(engine: Engine, trigger: str, requested_by: str | None = None, from_scratch: bool = False,
                product: str = DEFAULT_PRODUCT) -> int:
    """Queue a training job of ``product``; returns its id. A job of that product already queued or running is
    returned instead of a new one (other products' jobs do not count).

    Raises:
        linewatch.contracts.products.ProductError: ``product`` is not a product name.
    """
    check_product(product)
    with Session(engine) as s, s.begin():
        pending = s.scalars(select(TrainingJob).where(TrainingJob.status.in_(("queued", "running")),
                                                      TrainingJob.product == product)
                            .order_by(TrainingJob.id)).first()
        if pending is not None:
            return pending.id
        job = TrainingJob(status="queued", trigger=trigger, requested_by=requested_by, from_scratch=from_scratch,
                          product=product, created_at=_now(), updated_at=_now())
        s.add(job)
        s.flush()
        return job.id


def claim_next(engine: Engine, pid: int) -> TrainingJob | None:
    """Mark the oldest queued job, of any product, running (only if no job is running) and return it."""
    with Session(engine, expire_on_commit=False) as s, s.begin():
        if s.scalars(select(TrainingJob.id).where(TrainingJob.status == "running")).first() is not None:
            return None
        job = s.scalars(select(TrainingJob).where(TrainingJob.status == "queued").order_by(TrainingJob.id)).first()
        if job is None:
            return None
        claimed = s.execute(update(TrainingJob).where(TrainingJob.id == job.id, TrainingJob.status == "queued")
                            .values(status="running", started_at=_now(), updated_at=_now(), worker_pid=pid,
                                    stage="starting"))
        if claimed.rowcount != 1:  # another trainer took it first
            return None
        s.refresh(job)
        return job


def progress(engine: Engine, job_id: int, **fields: Any) -> None:
    """Record progress (stage, epoch, epochs, loss, eta_s ...) and refresh the heartbeat."""
    with engine.begin() as conn:
        conn.execute(update(TrainingJob).where(TrainingJob.id == job_id).values(**fields, updated_at=_now()))


def finish(engine: Engine, job_id: int, status: str, error: str | None = None,
           candidate_version: str | None = None, stage: str | None = None) -> None:
    values: dict[str, Any] = {"status": status, "finished_at": _now(), "updated_at": _now(), "error": error}
    if candidate_version is not None:
        values["candidate_version"] = candidate_version
    if stage is not None:
        values["stage"] = stage
    with engine.begin() as conn:
        conn.execute(update(TrainingJob).where(TrainingJob.id == job_id, TrainingJob.status == "running")
                     .values(**values))


def fail_stale(engine: Engine) -> list[int]:
    """Mark failed the running jobs whose heartbeat stopped (their process died); returns their ids."""
    cutoff = _now() - STALE_AFTER
    with Session(engine) as s, s.begin():
        stale = list(s.scalars(select(TrainingJob.id).where(TrainingJob.status == "running",
                                                             TrainingJob.updated_at < cutoff)))
        if stale:
            s.execute(update(TrainingJob).where(TrainingJob.id.in_(stale)).values(
                status="failed", finished_at=_now(), error="the training process stopped reporting (it died)"))
    return stale


def get_job(engine: Engine, job_id: int) -> TrainingJob | None:
    with Session(engine, expire_on_commit=False) as s:
        return s.get(TrainingJob, job_id)


def running_job(engine: Engine) -> TrainingJob | None:
    """The job running now, of any product (None: none is)."""
    with Session(engine, expire_on_commit=False) as s:
        return s.scalars(select(TrainingJob).where(TrainingJob.status == "running").order_by(TrainingJob.id)).first()


def recent_jobs(engine: Engine, limit: int = 20, product: str | None = None) -> list[TrainingJob]:
    """The newest ``limit`` jobs, newest first: of ``product``, or of every product (None)."""
    query = select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit)
    if product is not None:
        query = query.where(TrainingJob.product == product)
    with Session(engine, expire_on_commit=False) as s:
        return list(s.scalars(query))


def last_finished(engine: Engine, product: str = DEFAULT_PRODUCT) -> TrainingJob | None:
    """``product``'s newest job that ended (succeeded or failed)."""
    with Session(engine, expire_on_commit=False) as s:
        return s.scalars(select(TrainingJob).where(TrainingJob.status.in_(("succeeded", "failed")),
                                                   TrainingJob.product == product)
                         .order_by(TrainingJob.id.desc())).first()
