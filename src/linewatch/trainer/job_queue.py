"""The training-job queue, in SQL (table ``training_jobs``): requests (CLI, dashboard, trainer triggers),
one job at a time, progress. Shared by the trainer, which runs the jobs, and whoever asks for one or shows them.

Status: queued -> running -> succeeded | failed. A running job whose progress heartbeat
(``updated_at``) is older than ``STALE_AFTER`` belonged to a process that died and is marked failed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from linewatch.contracts.schema import TrainingJob

STALE_AFTER = dt.timedelta(minutes=3)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def request_job(engine: Engine, trigger: str, requested_by: str | None = None, from_scratch: bool = False) -> int:
    """Queue a training job; returns its id. A job already queued or running is returned instead of a new one."""
    with Session(engine) as s, s.begin():
        pending = s.scalars(select(TrainingJob).where(TrainingJob.status.in_(("queued", "running")))
                            .order_by(TrainingJob.id)).first()
        if pending is not None:
            return pending.id
        job = TrainingJob(status="queued", trigger=trigger, requested_by=requested_by, from_scratch=from_scratch,
                          created_at=_now(), updated_at=_now())
        s.add(job)
        s.flush()
        return job.id


def claim_next(engine: Engine, pid: int) -> TrainingJob | None:
    """Mark the oldest queued job running (only if none is running) and return it."""
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


def recent_jobs(engine: Engine, limit: int = 20) -> list[TrainingJob]:
    with Session(engine, expire_on_commit=False) as s:
        return list(s.scalars(select(TrainingJob).order_by(TrainingJob.id.desc()).limit(limit)))


def last_finished(engine: Engine) -> TrainingJob | None:
    """The newest job that ended (succeeded or failed)."""
    with Session(engine, expire_on_commit=False) as s:
        return s.scalars(select(TrainingJob).where(TrainingJob.status.in_(("succeeded", "failed")))
                         .order_by(TrainingJob.id.desc())).first()
