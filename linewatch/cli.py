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
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from linewatch.contracts.settings import CONFIG_ENV, Settings, get_settings

app = typer.Typer(
    name="linewatch",
    help="Real-time visual quality control: STPM anomaly detection on camera streams.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto, cpu or cuda [settings: detector.device]")]


@app.callback()
def main(
    config: Annotated[
        Path | None, typer.Option("--config", help=f"TOML settings file (also ${CONFIG_ENV})", exists=True)
    ] = None,
) -> None:
    if config is not None:
        os.environ[CONFIG_ENV] = str(config.resolve())  # child processes read the same file
    get_settings.cache_clear()
    from linewatch.contracts.observability import configure_logging

    settings = _settings()
    configure_logging(settings.log_format, settings.log_level)


def _settings() -> Settings:
    try:
        return get_settings()
    except (ValueError, OSError) as exc:
        _fail(f"invalid settings: {exc}")


def _fail(message: str, code: int = 2) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


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
    data: Annotated[Path, typer.Option("--data", help="MVTec AD category, Magnetic Tile folder or folder of good images")],
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
    from dataclasses import fields

    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.training import TrainConfig
    from linewatch.detector.training import train as run_training

    s = _settings()
    recipe = s.training.model_dump()
    recipe.update(backbone=s.backbone.name, teacher_weights=s.backbone.weights, device=s.detector.device,
                  max_pixels=s.detector.max_pixels)
    overrides = dict(backbone=backbone, teacher_weights=teacher_weights, epochs=epochs, batch_size=batch_size,
                     image_size=image_size, lr=lr, device=device, seed=seed)
    recipe.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig(**{f.name: recipe[f.name] for f in fields(TrainConfig) if f.name in recipe})
    with _user_errors():
        dataset = open_dataset(data)
        result = run_training(dataset.train, out, config, progress=progress)
    meta = result.metadata
    typer.echo(
        f"model written to {result.model_dir}\n"
        f"  best epoch {meta['training']['best_epoch']}/{config.epochs}, validation loss {meta['validation']['loss']:.4f}, "
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
        scorer = Scorer(model, device or s.detector.device, s.backbone.weights)
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
        scorer = Scorer(model, device or s.detector.device, s.backbone.weights)
    failed = False
    for path in images:
        try:
            rgb = read_image(path, s.detector.max_pixels)
        except ImageError as exc:
            typer.echo(json.dumps({"path": str(path), "error": exc.reason, "detail": exc.detail}))
            failed = True
            continue
        result = scorer.score(scorer.prepare(rgb)[None])
        regions = scorer.regions(result.anomaly_maps[0], rgb.shape[:2])
        typer.echo(json.dumps({
            "path": str(path), "image_score": float(result.image_scores[0]),
            "normalized_score": float(result.normalized[0]),
            "verdict": "defect" if result.is_defect[0] else "good", "model_version": scorer.version,
            "regions": [r.__dict__ for r in regions],
        }))
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
