"""``linewatch trainer``: the long-running retraining service.

Every ``trainer.poll_s`` seconds it
1. marks failed the jobs whose process died,
2. for each product with an active version, queues a job of that product when one of its triggers fires:
   ``trainer.min_new_good`` frames of that product confirmed good since its active version was made (or its
   last job ended), or ``trainer.schedule_hours`` since then (manual requests come from ``linewatch retrain``
   and the dashboard); a product whose check fails is logged and skipped, the others are still checked,
3. runs the next queued job, of any product, in a child process, one at a time, and records how it ended.

A product without an active version has nothing to fine-tune and no trigger: its first version is registered by
hand (``linewatch model register DIR --product P --activate``) or trained from scratch on request.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import subprocess
import sys
import threading

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.labels import count_confirmed_good_frames
from linewatch.contracts.schema import ModelVersion
from linewatch.contracts.settings import Settings
from linewatch.trainer import job_queue as jobs

from . import telemetry
from .registry import ModelRegistry

log = logging.getLogger(__name__)


class TrainerService:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.engine: Engine = make_engine(settings.database_url)
        migrate(self.engine)
        self.registry = ModelRegistry.for_settings(settings, self.engine)
        self.stop_event = threading.Event()
        self.child: subprocess.Popen | None = None
        self.child_job: int | None = None
        self.logs = settings.state_dir / "logs"

    def request_stop(self) -> None:
        self.stop_event.set()

    def run(self, install_signal_handlers: bool = True) -> int:
        if install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, lambda *_: self.request_stop())
        log.info("trainer started: retrains after %d confirmed-good frames%s", self.settings.trainer.min_new_good,
                 f" or every {self.settings.trainer.schedule_hours} h" if self.settings.trainer.schedule_hours else "")
        while not self.stop_event.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 -- a database hiccup must not end the service
                log.exception("trainer tick failed; retrying")
            self.stop_event.wait(self.settings.trainer.poll_s)
        if self.child is not None and self.child.poll() is None:
            log.info("stopping job %s", self.child_job)
            self.child.terminate()
            self._reap(self.child.wait(60))
        self.engine.dispose()
        return 0

    def tick(self) -> None:
        """One pass of the loop (see the module docstring)."""
        self._report()
        if self.child is not None:
            code = self.child.poll()
            if code is None:
                return
            self._reap(code)
        for job_id in jobs.fail_stale(self.engine):
            log.error("job %d stopped reporting; marked failed", job_id)
        self._check_triggers()
        job = jobs.claim_next(self.engine, os.getpid())
        if job is not None:
            self._start(job.id, job.product)

    def _report(self) -> None:
        """Training progress and the active version, as Prometheus metrics."""
        job = jobs.get_job(self.engine, self.child_job) if self.child_job is not None else None
        telemetry.JOB_RUNNING.set(1 if job is not None and job.status == "running" else 0)
        if job is not None:
            telemetry.EPOCH.set(job.epoch or 0)
            telemetry.EPOCHS.set(job.epochs or 0)
            telemetry.LOSS.set(job.loss or 0.0)
            telemetry.ETA_SECONDS.set(job.eta_s or 0.0)
        telemetry.ACTIVE_MODEL.clear()
        for active in self._active_versions():  # version names carry the product (bottle/v3)
            telemetry.ACTIVE_MODEL.labels(version=active.version).set(1)

    def _active_versions(self) -> list[ModelVersion]:
        """The active version of each product that has one, by product."""
        with Session(self.engine, expire_on_commit=False) as s:
            return list(s.scalars(select(ModelVersion).where(ModelVersion.status == "active")
                                  .order_by(ModelVersion.product)))

    def _check_triggers(self) -> None:
        """Each product's triggers (module docstring); one product's failure never skips another's check."""
        for active in self._active_versions():
            try:
                self._check_product(active)
            except Exception:  # noqa: BLE001 -- one product's trouble must not stop the others' retraining
                log.exception("checking the triggers of %s failed; the other products go on", active.product)

    def _check_product(self, active: ModelVersion) -> None:
        t, product = self.settings.trainer, active.product
        last = jobs.last_finished(self.engine, product)
        since = max(active.created_at, last.finished_at) if last is not None and last.finished_at else active.created_at
        with self.engine.connect() as conn:
            new_good = count_confirmed_good_frames(conn, since=since, second_opinion_above=t.second_opinion_above,
                                                   product=product)
        if new_good >= t.min_new_good:
            job_id = jobs.request_job(self.engine, "threshold", requested_by="trainer", product=product)
            log.info("%d frames of %s confirmed good since %s: job %d queued", new_good, product, since.isoformat(),
                     job_id)
        elif t.schedule_hours and dt.datetime.now(dt.UTC) - since > dt.timedelta(hours=t.schedule_hours):
            job_id = jobs.request_job(self.engine, "schedule", requested_by="trainer", product=product)
            log.info("scheduled retraining of %s: job %d queued", product, job_id)

    def _start(self, job_id: int, job_product: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"training-job-{job_id}.log"
        with open(log_path, "ab") as logfile:
            self.child = subprocess.Popen([sys.executable, "-m", "linewatch", "trainer", "--run-job", str(job_id)],
                                          stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.child_job = job_id
        jobs.progress(self.engine, job_id, worker_pid=self.child.pid)
        log.info("job %d (%s) started (pid %d, log %s)", job_id, job_product, self.child.pid, log_path)

    def _reap(self, code: int) -> None:
        """Record how the job process ended (a job that did not record its own end failed)."""
        job_id, self.child, self.child_job = self.child_job, None, None
        if job_id is None:
            return
        if code != 0:
            how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
            jobs.finish(self.engine, job_id, "failed", error=f"training process {how}")
        job = jobs.get_job(self.engine, job_id)
        if job is not None:
            telemetry.JOBS.labels(status=job.status).inc()
        log.info("job %d ended: %s %s", job_id, job.status if job else "?", (job.error or "") if job else "")


def run_trainer(settings: Settings, run_job_id: int | None = None) -> int:
    """Entry point of ``linewatch trainer``."""
    if run_job_id is not None:
        from .job import run_job

        return run_job(settings, run_job_id)
    server = None
    if settings.trainer.metrics_port:
        from linewatch.observability import serve_metrics

        server = serve_metrics(settings.trainer.metrics_port)
    try:
        return TrainerService(settings).run()
    finally:
        if server is not None:
            server.shutdown()

