"""The ``linewatch`` command: one subcommand per job.

Service modules are imported inside each command, so ``linewatch --help`` stays fast and a
command loads only what its service needs.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from linewatch.contracts.settings import CONFIG_ENV, Settings, get_settings, unknown_settings

app = typer.Typer(
    name="linewatch",
    help="Real-time visual quality control: STPM anomaly detection on camera streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

class DeviceChoice(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DeviceOpt = Annotated[DeviceChoice | None, typer.Option("--device", help="[settings: detector.device]")]


def _device(choice: DeviceChoice | None) -> str | None:
    return choice.value if choice is not None else None


def run() -> None:
    """The console entry point: the app, with the service errors an operator can fix (no broker
    configured or reachable, Redis or the SQL store down, a state folder that cannot be made) reported
    in one line, exit status 2, instead of a traceback."""
    import redis
    from kafka.errors import KafkaError
    from sqlalchemy.exc import OperationalError

    from linewatch.contracts.kafka import KafkaNotConfiguredError

    try:
        app()
    except KafkaNotConfiguredError as exc:
        _fail(str(exc))
    except KafkaError as exc:
        servers = get_settings().kafka.bootstrap_servers
        _fail(f"Kafka at {servers} did not answer: {type(exc).__name__}: {exc}")
    except redis.ConnectionError as exc:
        _fail(f"Redis at {get_settings().redis.url} did not answer: {exc}")
    except OperationalError as exc:
        _fail(f"the SQL store did not answer: {str(exc.orig).strip() or exc}")
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError) as exc:
        _fail(str(exc))


@app.callback()
def main(
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

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)


def _settings() -> Settings:
    try:
        return get_settings()
    except (ValueError, OSError) as exc:
        _fail(f"invalid settings: {exc}")


def _fail(message: str, code: int = 2) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code`` (SystemExit, so it also works in :func:`run`,
    outside the app)."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    sys.exit(code)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """Turn the errors a user can fix (bad file, missing weights, ...) into one clear line and exit 2."""
    from linewatch.detector.backbones import WeightsNotFoundError
    from linewatch.detector.datasets import DatasetError
    from linewatch.detector.imaging import ImageError
    from linewatch.detector.model_files import ModelFileError
    from linewatch.detector.training import TrainingError

    try:
        yield
    except (ImageError, DatasetError, ModelFileError, WeightsNotFoundError, TrainingError) as exc:
        _fail(str(exc))
    except RuntimeError as exc:
        if "cuda" in str(exc).lower():
            _fail(str(exc))
        raise


@app.command()
def train(
    data: Annotated[Path, typer.Option(
        "--data", help="MVTec AD category, Magnetic Tile folder or folder of good images")],
    out: Annotated[Path, typer.Option("--out", help="model directory to write")],
    backbone: Annotated[str | None, typer.Option(help="teacher/student architecture [efficientnet_lite0]")] = None,
    teacher_weights: Annotated[Path | None, typer.Option(help="teacher ImageNet weights file")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    image_size: Annotated[int | None, typer.Option(min=32)] = None,
    lr: Annotated[float | None, typer.Option(min=0.0)] = None,
    device: DeviceOpt = None,
    seed: Annotated[int | None, typer.Option()] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Train an STPM student on good images; thresholds are calibrated on held-out good images."""
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.model_files import check_output_dir
    from linewatch.detector.training import TrainConfig
    from linewatch.detector.training import train as run_training

    s = _with(_settings(), "training", epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr, seed=seed)
    s = _with(_with(s, "backbone", name=backbone, weights=teacher_weights), "detector", device=_device(device))
    config = TrainConfig.from_settings(s)
    with _user_errors():
        check_output_dir(out)  # before the training, not after it
        dataset = open_dataset(data)
        result = run_training(dataset.train, out, config, progress=progress)
    meta = result.metadata
    typer.echo(
        f"model written to {result.model_dir}\n"
        f"  best epoch {meta['training']['best_epoch']}/{config.epochs}, "
        f"validation loss {meta['validation']['loss']:.4f}, "
        f"{meta['training']['duration_s']:.0f} s on {meta['training']['device']}\n"
        f"  image threshold {meta['thresholds']['image']:.5f} (false-reject target {config.target_false_reject_rate}), "
        f"pixel threshold {meta['thresholds']['pixel']:.5f}"
    )


@app.command("eval")
def evaluate(
    model: Annotated[Path, typer.Option("--model", help="model directory")],
    data: Annotated[Path, typer.Option("--data", help="MVTec AD category or the Magnetic Tile folder")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full report as JSON")] = None,
    maps: Annotated[Path | None, typer.Option("--maps", help="write heatmap overlays (PNG) to this folder")] = None,
    device: DeviceOpt = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Image AUROC, pixel AUROC and AU-PRO (MVTec protocol), per defect type and overall."""
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.evaluation import evaluate as run_evaluation
    from linewatch.detector.scoring import Scorer

    s = _settings()
    with _user_errors():
        dataset = open_dataset(data)
        scorer = Scorer(model, _device(device) or s.detector.device, s.backbone.weights)
        report = run_evaluation(scorer, dataset, maps_dir=maps, progress=progress)
    typer.echo(format_report(report))
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        typer.echo(f"report written to {json_out}")


def format_report(report: dict) -> str:
    """A plain-text table of an evaluation report."""

    def f(v: float | None) -> str:
        return "  -  " if v is None else f"{v:.3f}"

    lines = [f"{'subset':<16}{'images':>7}{'img AUROC':>11}{'px AUROC':>10}{'AU-PRO':>8}{'miss':>7}"]
    o = report["overall"]
    lines.append(f"{'overall':<16}{o['images']:>7}{f(o['image_auroc']):>11}{f(o['pixel_auroc']):>10}"
                 f"{f(o['au_pro']):>8}{f(o['miss_rate']):>7}")
    for name, m in report["per_defect_type"].items():
        lines.append(f"{name:<16}{m['images']:>7}{f(m['image_auroc']):>11}{f(m['pixel_auroc']):>10}"
                     f"{f(m['au_pro']):>8}{f(m['miss_rate']):>7}")
    lines.append(f"false-reject rate on good images at the stored threshold: {f(o['false_reject_rate'])}")
    if "image" in report["f1_optimal"]:
        best = report["f1_optimal"]["image"]
        lines.append(f"F1-optimal image threshold {best['threshold']:.5f} "
                     f"({best['normalized_threshold']:.2f} x stored), F1 {best['f1']:.3f}")
    return "\n".join(lines)


@app.command()
def score(
    model: Annotated[Path, typer.Option("--model", help="model directory")],
    images: Annotated[list[Path], typer.Argument(help="image files to score")],
    device: DeviceOpt = None,
) -> None:
    """Score image files; prints one JSON line per image (bad files get an error line, exit code 1)."""
    from linewatch.detector.imaging import ImageError, read_image
    from linewatch.detector.scoring import Scorer

    s = _settings()
    with _user_errors():
        scorer = Scorer(model, _device(device) or s.detector.device, s.backbone.weights)
    failed = False
    for path in images:
        try:
            rgb = read_image(path, s.detector.max_pixels)
        except ImageError as exc:
            typer.echo(json.dumps({"path": str(path), "error": exc.reason, "detail": exc.detail}))
            failed = True
            continue
        result = scorer.score(scorer.prepare(rgb)[None])
        # Regions explain a defect verdict, as in the workers' results; a good part has none.
        regions = scorer.regions(result.anomaly_maps[0], rgb.shape[:2]) if result.is_defect[0] else []
        typer.echo(json.dumps({
            "path": str(path), "image_score": float(result.image_scores[0]),
            "normalized_score": float(result.normalized[0]),
            "verdict": "defect" if result.is_defect[0] else "good", "model_version": scorer.version,
            "regions": [r.model_dump() for r in regions],
        }))
    if failed:
        raise typer.Exit(1)


def _with(settings: Settings, section: str, **values: object) -> Settings:
    """A copy of ``settings`` with the given (non-None) values set in one section, checked against the
    same limits as the settings themselves (exits with a clear error where a value breaks one)."""
    from pydantic import ValidationError

    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return settings
    current = getattr(settings, section)
    try:
        updated = type(current).model_validate({**current.model_dump(), **values})
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(x) for x in e['loc']).replace('_', '-')}: {e['msg']}"
                             for e in exc.errors())
        _fail(problems)
    return settings.model_copy(update={section: updated})


@app.command()
def ingest(
    camera_id: Annotated[str, typer.Option("--camera-id", help="camera identity (the Kafka message key)")],
    source: Annotated[str, typer.Option(
        "--source", help="USB device index, RTSP/HTTP URL, video file or image folder")],
    fps: Annotated[float, typer.Option(min=0.0, help="frames per second; 0 = as fast as the source gives")] = 10.0,
    line_id: Annotated[str, typer.Option("--line-id", help="production line of this camera")] = "line-1",
    loop: Annotated[bool, typer.Option(help="replay a folder or video file forever")] = False,
    max_frames: Annotated[int | None, typer.Option(min=1, help="stop after this many frames")] = None,
    jpeg_quality: Annotated[int | None, typer.Option(min=10, max=100, help="JPEG quality of captured frames")] = None,
) -> None:
    """Run a camera service: capture frames and publish them to Kafka. Prints its counters as JSON at the end."""
    from dataclasses import asdict

    from linewatch.contracts.kafka import ensure_topics
    from linewatch.ingest.camera import CameraService
    from linewatch.ingest.sources import SourceError, open_source

    s = _with(_settings(), "ingest", jpeg_quality=jpeg_quality)
    try:
        src = open_source(source, loop=loop, jpeg_quality=s.ingest.jpeg_quality)
    except SourceError as exc:
        _fail(str(exc))
    ensure_topics(s.kafka)
    server = None
    if s.ingest.metrics_port:
        from linewatch.observability import serve_metrics

        server = serve_metrics(s.ingest.metrics_port)
    counters = CameraService(s, camera_id, line_id, src, fps=fps, max_frames=max_frames).run()
    if server is not None:
        server.shutdown()
    typer.echo(json.dumps({"camera_id": camera_id, **asdict(counters)}))
    if counters.failed:
        raise typer.Exit(1)


@app.command()
def detect(
    model: Annotated[Path | None, typer.Option(
        "--model", help="model directory [settings: detector.model_dir]")] = None,
    group: Annotated[str | None, typer.Option("--group", help="consumer group")] = None,
    device: DeviceOpt = None,
    max_batch: Annotated[int | None, typer.Option(min=1, help="frames per inference batch at most")] = None,
    max_wait_ms: Annotated[int | None, typer.Option(min=0, help="longest a frame waits for its batch, ms")] = None,
    threads: Annotated[int | None, typer.Option(
        min=1, help="CPU threads for inference (default: all cores; all but one for a single frame)")] = None,
    follow_registry: Annotated[bool, typer.Option(
        help="score with the registry's active model and follow rollouts")] = True,
) -> None:
    """Run a detector worker in the consumer group; start more to scale out (up to the partition count)."""
    from linewatch.contracts.kafka import ensure_topics
    from linewatch.detector.stream.main import run_worker

    s = _with(_settings(), "detector", model_dir=model, group_id=group, device=_device(device), max_batch=max_batch,
              max_wait_ms=max_wait_ms)
    if s.detector.model_dir is None and not follow_registry:
        _fail("no model: pass --model MODEL_DIR or set LINEWATCH_DETECTOR__MODEL_DIR")
    ensure_topics(s.kafka)
    with _user_errors():
        try:
            code = run_worker(s, s.detector.model_dir, threads, follow_registry)
        except ValueError as exc:
            _fail(str(exc))
    raise typer.Exit(code)


@app.command()
def trainer(
    run_job: Annotated[int | None, typer.Option("--run-job", hidden=True, help="run one claimed job and exit")] = None,
) -> None:
    """Run the retraining service: retrains on operator-confirmed good frames and rolls out better models."""
    from linewatch.trainer.service import run_trainer

    raise typer.Exit(run_trainer(_settings(), run_job))


@app.command()
def retrain(
    from_scratch: Annotated[bool, typer.Option(
        help="train a new student instead of fine-tuning the active one")] = False,
    by: Annotated[str, typer.Option(help="who asks (recorded)")] = os.environ.get("USER", "cli"),
    wait: Annotated[bool, typer.Option(help="follow the job's progress until it ends")] = False,
) -> None:
    """Ask the trainer service for a retraining now (one job at a time: an unfinished job is reused)."""
    import time

    from linewatch.trainer import job_queue as jobs

    registry = _registry()
    if not from_scratch and registry.active() is None:
        _fail("no active model version to fine-tune: register one with `linewatch model register DIR --activate`, "
              "or pass --from-scratch")
    engine = registry.engine
    job_id = jobs.request_job(engine, "manual", requested_by=by, from_scratch=from_scratch)
    typer.echo(f"training job {job_id} queued; the trainer service (`linewatch trainer`) runs it")
    while wait:
        job = jobs.get_job(engine, job_id)
        typer.echo(f"\r{_job_line(job)}", nl=False)
        if job.status in ("succeeded", "failed"):
            typer.echo()
            raise typer.Exit(0 if job.status == "succeeded" else 1)
        time.sleep(2)


def _job_line(job) -> str:
    epoch = f" epoch {job.epoch}/{job.epochs}" if job.epoch is not None and job.epochs else ""
    loss = f" loss {job.loss:.4f}" if job.loss is not None else ""
    eta = f" {job.eta_s:.0f} s left" if job.eta_s else ""
    outcome = f" -> {job.candidate_version}" if job.candidate_version else ""
    error = f" error: {job.error.splitlines()[0]}" if job.error else ""
    return f"job {job.id} [{job.status}] {job.stage or ''}{epoch}{loss}{eta}{outcome}{error}"


model_app = typer.Typer(help="The model registry: versions, activation, rollback, training jobs.",
                        no_args_is_help=True)
app.add_typer(model_app, name="model")


def _registry():
    from linewatch.contracts.database import make_engine, migrate
    from linewatch.trainer.registry import ModelRegistry

    s = _settings()
    engine = make_engine(s.database_url)
    migrate(engine)
    return ModelRegistry(engine, s.artifact_store_root, s.kafka if s.kafka.bootstrap_servers else None)


@model_app.command("list")
def model_list() -> None:
    """All versions, newest last."""
    rows = _registry().list()
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
        r = _registry().get(version)
    except RegistryError as exc:
        _fail(str(exc))
    typer.echo(json.dumps({c: getattr(r, c) for c in ("version", "status", "parent_version", "backbone", "created_at",
                           "artifact_uri", "thresholds", "metrics", "activated_by", "activated_at", "notes")}
                          | {"training_images": len(r.manifest)}, indent=2, default=str))


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
        _fail(str(exc))
    registry = _registry()
    row = registry.use(model_dir, by) if activate else registry.register(model_dir, notes=f"registered by {by}")
    typer.echo(f"{row.version} registered ({row.status})")


@model_app.command("activate")
def model_activate(version: str, by: Annotated[str, typer.Option(help="who activates (recorded)")] =
                   os.environ.get("USER", "cli")) -> None:
    """Make VERSION the active model; the workers switch between two batches."""
    from linewatch.trainer.registry import RegistryError

    try:
        row = _registry().activate(version, by)
    except RegistryError as exc:
        _fail(str(exc))
    typer.echo(f"{row.version} is active")


@model_app.command("rollback")
def model_rollback(by: Annotated[str, typer.Option(help="who rolls back (recorded)")] =
                   os.environ.get("USER", "cli")) -> None:
    """Re-activate the version that was active before the current one."""
    from linewatch.trainer.registry import RegistryError

    try:
        row = _registry().rollback(by)
    except RegistryError as exc:
        _fail(str(exc))
    typer.echo(f"rolled back: {row.version} is active")


@model_app.command("jobs")
def model_jobs(limit: Annotated[int, typer.Option(min=1)] = 10) -> None:
    """Recent training jobs with their progress."""
    from linewatch.trainer import job_queue as jobs

    rows = jobs.recent_jobs(_registry().engine, limit)
    if not rows:
        typer.echo("no training jobs yet")
    for job in rows:
        typer.echo(_job_line(job))


@app.command()
def up(
    max_frames: Annotated[int | None, typer.Option(
        min=1, help="stop after this many inspections; print a JSON summary")] = None,
    workers: Annotated[int, typer.Option(min=1, help="detector workers")] = 1,
    fps: Annotated[float, typer.Option(min=0.0, help="camera frame rate; 0 = as fast as possible")] = 10.0,
    model: Annotated[Path | None, typer.Option(
        help="model directory (default: train on the bottle images once)")] = None,
    source: Annotated[Path | None, typer.Option(
        help="image folder the camera replays (default: bottle test images)")] = None,
    dashboard: Annotated[bool, typer.Option(help="start the dashboard")] = True,
    trainer: Annotated[bool, typer.Option(help="start the retraining service")] = True,
    dashboard_port: Annotated[int, typer.Option(help="dashboard port")] = 8501,
    epochs: Annotated[int | None, typer.Option(min=1, help="epochs when the default model is trained")] = None,
) -> None:
    """Run everything on this machine with embedded defaults: broker, Redis, SQLite, model, camera, workers."""
    from linewatch.cli.up import UpOptions, run_up

    options = UpOptions(max_frames=max_frames, workers=workers, fps=fps, model=model, source=source,
                        dashboard=dashboard, dashboard_port=dashboard_port, trainer=trainer, epochs=epochs)
    with _user_errors():
        code = run_up(_settings(), options)
    raise typer.Exit(code)


@app.command()
def dashboard(
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="port [settings: dashboard.port]")] = None,
    address: Annotated[str | None, typer.Option(help="interface to listen on [settings: dashboard.address]")] = None,
) -> None:
    """Run the Streamlit dashboard: live defect rates, heatmaps, defect gallery, operator review, models.

    The process becomes ``streamlit run`` (same PID), so SIGTERM stops the dashboard directly.
    """
    s = _with(_settings(), "dashboard", port=port, address=address)
    # `streamlit run dashboard/app.py` with these options (see linewatch.dashboard.launch for why a launcher)
    argv = [sys.executable, "-m", "linewatch.dashboard.launch",
            "--server.port", str(s.dashboard.port), "--server.address", s.dashboard.address,
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--server.runOnSave", "false",
            "--client.toolbarMode", "minimal"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)


operator_app = typer.Typer(help="Dashboard operator accounts (the accounts file of dashboard.accounts_file).",
                           no_args_is_help=True)
app.add_typer(operator_app, name="operator")

AccountsOpt = Annotated[Path | None,
                        typer.Option("--accounts", help="accounts file [settings: dashboard.accounts_file]")]


def _accounts_file(accounts: Path | None) -> Path:
    path = accounts or _settings().dashboard.accounts_file
    if path is None:
        _fail("no accounts file: pass --accounts FILE or set LINEWATCH_DASHBOARD__ACCOUNTS_FILE")
    return path


@operator_app.command("add")
def operator_add(
    name: Annotated[str, typer.Argument(help="operator name (letters, digits, . _ @ -)")],
    accounts: AccountsOpt = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="read the password from stdin")] = False,
) -> None:
    """Add an operator, or set a new password for one (asked for twice, hidden)."""
    from linewatch.dashboard.accounts import AccountsError, set_password, validate_name

    path = _accounts_file(accounts)
    try:
        validate_name(name)
    except AccountsError as exc:
        _fail(str(exc))
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(f"password for {name}", hide_input=True, confirmation_prompt=True)
    try:
        new = set_password(path, name, password)
    except (AccountsError, ValueError, OSError) as exc:
        _fail(str(exc))
    typer.echo(f"{'added' if new else 'updated'} operator {name} in {path}")


@operator_app.command("remove")
def operator_remove(name: str, accounts: AccountsOpt = None) -> None:
    """Remove an operator."""
    from linewatch.dashboard.accounts import AccountsError, remove_account

    path = _accounts_file(accounts)
    try:
        removed = remove_account(path, name)
    except (AccountsError, OSError) as exc:
        _fail(str(exc))
    if not removed:
        _fail(f"no operator {name!r} in {path}", code=1)
    typer.echo(f"removed operator {name} from {path}")


@operator_app.command("list")
def operator_list(accounts: AccountsOpt = None) -> None:
    """The operators in the accounts file."""
    from linewatch.dashboard.accounts import AccountsError, load_accounts

    path = _accounts_file(accounts)
    try:
        names = sorted(load_accounts(path))
    except AccountsError as exc:
        _fail(str(exc))
    typer.echo("\n".join(names) if names else f"no operators in {path}")


db_app = typer.Typer(help="The SQL store.", no_args_is_help=True)
app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Create or upgrade the database schema (Alembic migrations)."""
    from linewatch.contracts.database import migrate

    s = _settings()
    migrate(s.database_url)
    typer.echo(f"database schema up to date ({_redact(s.database_url)})")


@app.command()
def setup() -> None:
    """Create the Kafka topics and bring the SQL schema up to date (idempotent; the deployment's first step)."""
    topics()
    db_upgrade()


@app.command()
def topics() -> None:
    """Create the Kafka topics with their partition counts and size limits (idempotent)."""
    from linewatch.contracts.kafka import ensure_topics

    s = _settings()
    ensure_topics(s.kafka)
    k = s.kafka
    typer.echo(f"topics ready: {k.frames_topic}, {k.dead_letter_topic}, {k.inspections_topic}, {k.models_topic}")


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
