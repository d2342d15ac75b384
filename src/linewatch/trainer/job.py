"""One training job, run in its own process (``linewatch trainer --run-job ID``) so that a crash or a
kill leaves the service, and the active model, untouched.

A job retrains its product (``training_jobs.product``): it collects that product's confirmed goods, fine-tunes
that product's active version, registers the candidate as that product's next version (``bottle/v3``) and
compares it with that product's active version; no other product's versions or announcements change.

Stages: collecting -> training -> evaluating -> registering (-> activated | rejected | candidate). A promoted
candidate whose announcement fails on every try ends the job failed at stage ``activation rolled back``: the
activation is undone in SQL (:mod:`.activation`) and the job's error says why.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import traceback
from pathlib import Path

from safetensors.torch import load_file
from sqlalchemy.engine import Engine

from linewatch.contracts.database import make_engine
from linewatch.contracts.settings import Settings
from linewatch.contracts.trainer_settings import product_path
from linewatch.detector.geometry import InputGeometry
from linewatch.detector.model_files import WEIGHTS_FILE, read_metadata
from linewatch.detector.runtimes.onnx_export import export_or_warn
from linewatch.detector.runtimes.openvino_export import openvino_export_or_warn
from linewatch.detector.runtimes.threads import apply_torch_threads, intra_op_threads
from linewatch.detector.scoring import Scorer
from linewatch.detector.training import EpochReport, TrainConfig, train
from linewatch.trainer import job_queue as jobs

from .dataset import build_training_set, record_left_out
from .promotion import review_candidate
from .registry import AnnouncementError, ModelRegistry, artifact_path

log = logging.getLogger(__name__)


def run_job(settings: Settings, job_id: int) -> int:
    """Run the claimed job ``job_id`` to its end; returns 0 on success (activated or rejected), 1 on failure."""
    engine = make_engine(settings.database_url)
    registry = ModelRegistry.for_settings(settings, engine)
    workdir = Path(tempfile.mkdtemp(prefix=f"linewatch-job{job_id}-"))
    apply_torch_threads(intra_op_threads(settings.detector.workers_on_host))  # its share beside the workers
    try:
        job = jobs.get_job(engine, job_id)
        if job is None or job.status != "running":
            raise RuntimeError(f"job {job_id} is not a running job")
        product = job.product
        active = registry.active(product)
        jobs.progress(engine, job_id, stage="collecting")
        data = build_training_set(engine, active, product_path(settings.trainer.base_data, product),
                                  guards=settings.trainer, product=product)
        log.info("job %d (%s): %d base + %d confirmed-good images (%d duplicates, %d excluded as defect, %d more left "
                 "out, %d held out as promotion evidence)", job_id, product, data.base, data.confirmed, data.duplicates,
                 data.excluded_defect, len(data.dropped), len(data.held_out))
        jobs.progress(engine, job_id, training_set=data.summary())
        config, init = _recipe(settings, active, job.from_scratch)
        # The epochs are the step budget's, known once the training windows are counted (a from-scratch bottle job
        # trains 60, not config.epochs' 20): the first epoch report carries them. None also clears a retried job's.
        jobs.progress(engine, job_id, stage="training", epoch=None, epochs=None, loss=None, eta_s=None)

        def on_epoch(r: EpochReport) -> None:
            jobs.progress(engine, job_id, stage="training", epoch=r.epoch, epochs=r.epochs, loss=r.loss, eta_s=r.eta_s)

        # The parent's held-out images stay held out: the candidate's threshold is never set on its training images.
        parent_val = {m["sha256"] for m in (active.manifest or []) if m.get("role") == "val"} if active else set()
        result = train(data.paths, workdir / "candidate", config, init_student=init, on_epoch=on_epoch, progress=False,
                       held_out=parent_val,
                       extra_metadata={"parent_version": active.version if active else None,
                                       "training_set": {"base": data.base, "confirmed_good": data.confirmed}})
        manifest = record_left_out(result.model_dir, data)
        jobs.progress(engine, job_id, stage="evaluating", eta_s=None)
        promote, reason, review = review_candidate(
            engine, settings.trainer, Scorer(result.model_dir, settings.detector.device, settings.backbone.weights),
            manifest, Scorer(artifact_path(active), settings.detector.device, settings.backbone.weights)
            if active is not None else None, product)
        if settings.trainer.export_onnx:  # before registering: the registry copies the export with the version
            export_or_warn(result.model_dir, settings.backbone.weights)
        for precision in settings.trainer.export_openvino:
            openvino_export_or_warn(result.model_dir, precision, settings.backbone.weights)
        jobs.progress(engine, job_id, stage="registering")
        row = registry.register(result.model_dir, parent=active.version if active else None, metrics={
            "validation": result.metadata["validation"], **review}, notes=reason, product=product)
        return conclude(engine, registry, job_id, row.version, promote and settings.trainer.auto_promote,
                        promote, reason)
    except Exception as exc:  # noqa: BLE001 -- any failure ends the job as failed, with its error
        log.exception("job %d failed", job_id)
        jobs.finish(engine, job_id, "failed", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        engine.dispose()


def conclude(engine: Engine, registry: ModelRegistry, job_id: int, version: str, activate: bool, promoted: bool,
             reason: str) -> int:
    """End job ``job_id`` on its registered candidate ``version``: activate it (``activate``), leave it a candidate
    (``promoted`` without auto-promotion) or mark it rejected; returns the job's exit code (0, or 1 when the
    activation was rolled back because announcing it failed on every try: the job then ends failed at stage
    ``activation rolled back``, its error saying why, SQL back on the version the workers run)."""
    if activate:
        try:
            registry.activate(version, by=f"trainer (job {job_id})", notes=reason)
        except AnnouncementError as exc:
            log.error("job %d: %s", job_id, exc)
            jobs.finish(engine, job_id, "failed", error=f"activation rolled back: {exc}", candidate_version=version,
                        stage="activation rolled back")
            return 1
        stage = "activated"
    elif promoted:
        stage = "candidate"
    else:
        registry.set_status(version, "rejected")
        stage = "rejected"
    jobs.finish(engine, job_id, "succeeded", candidate_version=version, stage=stage)
    log.info("job %d: %s %s (%s)", job_id, stage, version, reason)
    return 0


def _recipe(settings: Settings, active, from_scratch: bool) -> tuple[TrainConfig, dict | None]:
    """Fine-tune the active student (its architecture, image size, input geometry and smoothing) or train from
    scratch."""
    if active is None or from_scratch:
        return TrainConfig.from_settings(settings), None
    path = artifact_path(active)
    meta = read_metadata(path)
    config = TrainConfig.from_settings(settings, backbone=meta["backbone"], image_size=meta["image_size"],
                                       map_smoothing_sigma=meta["map_smoothing_sigma"],
                                       **InputGeometry.from_metadata(meta).recipe(),
                                       epochs=settings.trainer.fine_tune_epochs, lr=settings.trainer.fine_tune_lr)
    return config, load_file(str(path / WEIGHTS_FILE))
