"""Prometheus metrics of the trainer service (served by ``linewatch.observability.serve_metrics``)."""

from prometheus_client import Counter, Gauge

JOB_RUNNING = Gauge("linewatch_training_job_running", "1 while a training job runs")
EPOCH = Gauge("linewatch_training_epoch", "Epoch of the running training job")
EPOCHS = Gauge("linewatch_training_epochs", "Epochs of the running training job")
LOSS = Gauge("linewatch_training_loss", "Mean training loss per image of the last epoch")
ETA_SECONDS = Gauge("linewatch_training_eta_seconds", "Estimated time left of the running job, seconds")
JOBS = Counter("linewatch_training_jobs_total", "Training jobs that ended", ["status"])
ACTIVE_MODEL = Gauge("linewatch_active_model_info", "The registry's active model version (value 1)", ["version"])
