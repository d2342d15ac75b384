"""``linewatch train``, ``eval``, ``score``, ``export`` and ``fit-global``: a model from good images, its accuracy,
its verdict on image files, its export and its global branch, all on this machine (no services). torch and the
detector load inside each command."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .errors import fail, service_errors, user_errors
from .options import DeviceOpt, RuntimeOpt, device_name, load_settings, runtime_name, with_values


def train(
    data: Annotated[Path, typer.Option(
        "--data", help="MVTec AD category, Magnetic Tile folder or folder of good images")],
    out: Annotated[Path, typer.Option("--out", help="model directory to write")],
    backbone: Annotated[str | None, typer.Option(help="teacher/student architecture [efficientnet_lite0]")] = None,
    teacher_weights: Annotated[Path | None, typer.Option(help="teacher ImageNet weights file")] = None,
    epochs: Annotated[int | None, typer.Option(min=1)] = None,
    batch_size: Annotated[int | None, typer.Option(min=1)] = None,
    image_size: Annotated[int | None, typer.Option(min=32)] = None,
    input_mode: Annotated[str | None, typer.Option(help="input geometry: auto (letterbox, tile strips), "
                                                   "letterbox, tile or resize [auto]")] = None,
    lr: Annotated[float | None, typer.Option(min=0.0)] = None,
    device: DeviceOpt = None,
    seed: Annotated[int | None, typer.Option()] = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
    force: Annotated[bool, typer.Option("--force", help="publish even with too few held-out good images for the "
                                        "false-reject target, marked under-calibrated")] = False,
    export: Annotated[bool, typer.Option(help="also write the ONNX export (as `linewatch export` does)")] = True,
    product: Annotated[str | None, typer.Option(
        help="also register the model as the next version of this product (a candidate: `linewatch model "
             "activate P/vN` makes it live); default: write the folder only")] = None,
) -> None:
    """Train an STPM student on good images; thresholds are calibrated on held-out good images (refused when too
    few stand behind the false-reject target, unless --force). With --product, the model is registered as that
    product's next version."""
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.global_branch import branch_summary
    from linewatch.detector.model_files import check_output_dir, epochs_trained
    from linewatch.detector.training import TrainConfig
    from linewatch.detector.training import train as run_training

    s = with_values(load_settings(), "training", epochs=epochs, batch_size=batch_size, image_size=image_size, lr=lr,
                    seed=seed, input_mode=input_mode)
    s = with_values(with_values(s, "backbone", name=backbone, weights=teacher_weights), "detector",
                    device=device_name(device))
    s = with_values(s, "training", allow_under_calibrated=True if force else None)
    config = TrainConfig.from_settings(s, **({"epochs": epochs} if epochs else {}))  # --epochs N: N epochs
    if product is not None:
        from linewatch.contracts.products import ProductError, check_product

        try:
            check_product(product)  # before the training, not after it
        except ProductError as exc:
            fail(str(exc))
    with user_errors():
        check_output_dir(out)  # before the training, not after it
        dataset = open_dataset(data)
        result = run_training(dataset.train, out, config, progress=progress)
    exported = None
    if export:
        from linewatch.detector.runtimes.onnx_export import export_or_warn

        exported = export_or_warn(result.model_dir, s.backbone.weights)
    meta = result.metadata
    typer.echo(
        f"model written to {result.model_dir}\n"
        f"  best epoch {meta['training']['best_epoch']}/{epochs_trained(meta)}, "
        f"validation loss {meta['validation']['loss']:.4f}, "
        f"{meta['training']['duration_s']:.0f} s on {meta['training']['device']}\n"
        f"  image threshold {meta['thresholds']['image']:.5f} (false-reject target {config.target_false_reject_rate}), "
        f"pixel threshold {meta['thresholds']['pixel']:.5f}\n"
        f"  {meta['thresholds']['status']}: {meta['thresholds']['calibrated_on']}, false-reject rate 95% interval "
        f"{meta['thresholds']['calibration']['false_reject_rate_ci'][0]:.3f}-"
        f"{meta['thresholds']['calibration']['false_reject_rate_ci'][1]:.3f}\n"
        f"  global branch: {branch_summary(meta)}"
    )
    if exported is not None:
        typer.echo(f"  ONNX export {exported['file']}: matches eager PyTorch to "
                   f"{exported['parity']['onnxruntime']['score_rel']:.1e} relative on the held-out goods")
    if product is not None:
        from .registry import open_registry

        with user_errors(), service_errors():
            row = open_registry().register(result.model_dir, notes="trained by linewatch train", product=product)
        typer.echo(f"registered as {row.version} ({row.status}): `linewatch model activate {row.version}` makes it "
                   "live")


def evaluate(
    model: Annotated[Path, typer.Option("--model", help="model directory")],
    data: Annotated[Path, typer.Option("--data", help="MVTec AD category or the Magnetic Tile folder")],
    json_out: Annotated[Path | None, typer.Option("--json", help="write the full report as JSON")] = None,
    maps: Annotated[Path | None, typer.Option("--maps", help="write heatmap overlays (PNG) to this folder")] = None,
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Image AUROC, pixel AUROC and AU-PRO (MVTec protocol), per defect type and overall."""
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.evaluation import evaluate as run_evaluation

    s = load_settings()
    with user_errors():
        dataset = open_dataset(data)
        scorer = _scorer(model, s, device, runtime)
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
    if "image_auroc_stpm" in o:
        lines.append(f"global branch: image AUROC fused {f(o['image_auroc'])} (above), STPM alone "
                     f"{f(o['image_auroc_stpm'])}, global alone {f(o['image_auroc_global'])}")
    if "image" in report["f1_optimal"]:
        best = report["f1_optimal"]["image"]
        lines.append(f"F1-optimal image threshold {best['threshold']:.5f} "
                     f"({best['normalized_threshold']:.2f} x stored), F1 {best['f1']:.3f}")
    return "\n".join(lines)


def score(
    model: Annotated[Path, typer.Option("--model", help="model directory")],
    images: Annotated[list[Path], typer.Argument(help="image files to score")],
    device: DeviceOpt = None,
    runtime: RuntimeOpt = None,
) -> None:
    """Score image files; prints one JSON line per image (bad files get an error line, exit code 1)."""
    from linewatch.detector.imaging import ImageError, read_image

    s = load_settings()
    with user_errors():
        scorer = _scorer(model, s, device, runtime)
    failed = False
    for path in images:
        try:
            rgb = read_image(path, s.detector.max_pixels)
        except ImageError as exc:
            typer.echo(json.dumps({"path": str(path), "error": exc.reason, "detail": exc.detail}))
            failed = True
            continue
        try:
            result = scorer.score_frames([scorer.prepare(rgb, str(path))])
        except ImageError as exc:  # too many tiles for the model's pixel scale
            typer.echo(json.dumps({"path": str(path), "error": exc.reason, "detail": exc.detail}))
            failed = True
            continue
        # Regions explain a defect verdict, as in the workers' results; a good part has none.
        regions = scorer.regions(result.maps[0], rgb.shape[:2]) if result.is_defect[0] else []
        typer.echo(json.dumps({
            "path": str(path), "image_score": float(result.image_scores[0]),
            "normalized_score": float(result.normalized[0]),
            **({} if result.global_scores is None else {"local_score": float(result.local_scores[0]),
                                                         "global_score": float(result.global_scores[0])}),
            "verdict": "defect" if result.is_defect[0] else "good", "model_version": scorer.version,
            "runtime": scorer.runtime,
            "regions": [r.model_dump() for r in regions],
        }))
    if failed:
        raise typer.Exit(1)


def _scorer(model: Path, s, device, runtime):
    """The scorer of ``eval`` and ``score``: torch's threads and the runtime from :mod:`linewatch.detector.runtimes`."""
    from linewatch.detector.runtimes.threads import apply_torch_threads, intra_op_threads
    from linewatch.detector.scoring import Scorer

    threads = apply_torch_threads(intra_op_threads())
    return Scorer(model, device_name(device) or s.detector.device, s.backbone.weights,
                  runtime=runtime_name(runtime, s), threads=threads)


class ExportFormat(StrEnum):
    onnx = "onnx"
    openvino = "openvino"


class ExportPrecision(StrEnum):
    fp32 = "fp32"
    bf16 = "bf16"
    int8 = "int8"


def export(
    model: Annotated[Path, typer.Option("--model", help="model directory")],
    fmt: Annotated[ExportFormat, typer.Option("--format", help="runtime graph to write")] = ExportFormat.onnx,
    precision: Annotated[ExportPrecision, typer.Option(
        "--precision", help="openvino only: fp32 (matches eager PyTorch), or the opt-in bf16 / int8 (NNCF) with "
        "thresholds recalibrated on it (--runtime openvino-bf16 / openvino-int8)")] = ExportPrecision.fp32,
) -> None:
    """Write the model's whole scoring graph for another runtime next to its files (model.onnx; OpenVINO IR
    model.xml/.bin), checked against eager PyTorch on the model's held-out goods (reduced precision: thresholds
    recalibrated on them) and recorded in model.json with its SHA-256."""
    from linewatch.detector.runtimes.onnx_export import export_onnx
    from linewatch.detector.runtimes.openvino_export import export_openvino

    s = load_settings()
    if fmt is ExportFormat.onnx and precision is not ExportPrecision.fp32:
        fail("--precision bf16 / int8 is for --format openvino; the ONNX export is float32")
    with user_errors():
        if fmt is ExportFormat.openvino:
            record = export_openvino(model, precision.value, s.backbone.weights)
        else:
            record = export_onnx(model, s.backbone.weights)
    typer.echo(f"{fmt.value} export ({precision.value}) written to {Path(model) / record['file']} "
               f"(sha256 {record['sha256'][:16]}...)")
    if "thresholds" in record:
        shift, t = record["against_float32"], record["thresholds"]
        typer.echo(f"  executes at {record['executes']} on {record['cpu']['name']}; thresholds recalibrated on "
                   f"{shift['held_out_goods']} held-out goods: image {t['image']:.6g} (float32: "
                   f"{shift['float32_threshold']:.6g}), pixel {t['pixel']:.6g}"
                   + (f", global {t['global']:.6g}" if "global" in t else "") + "\n"
                   f"  against float32 on them: max score shift {shift['max_score_shift']:.1e}, map shift "
                   f"{shift['max_map_shift']:.1e} relative; verdict flips {shift['verdict_flips']}; "
                   f"{shift['rejected_at_float32_threshold']} would be rejected at the float32 threshold")
        return
    p = record["parity"][next(iter(record["parity"]))]
    typer.echo(f"  matches eager PyTorch on {p['images']} {p['on']}: scores {p['score_rel']:.1e}, maps "
               f"{p['map_rel']:.1e} relative (tolerance {p['tolerance']:g})"
               + "".join(f"\n  {name}: scores {q['score_rel']:.1e}, maps {q['map_rel']:.1e} relative, "
                         f"{'matches' if q['passed'] else 'DOES NOT MATCH (--runtime ' + name + ' refuses it)'}"
                         for name, q in list(record["parity"].items())[1:]))


def fit_global(
    model: Annotated[Path, typer.Option("--model", help="model directory")],
    device: DeviceOpt = None,
    export: Annotated[bool, typer.Option(help="export the model again in the formats it had")] = True,
) -> None:
    """Give a trained model the global branch (a Gaussian of pooled teacher features, fused with STPM's image
    score), fit on its own training goods and calibrated on its held-out goods, which must still be readable and
    unchanged. The student, STPM's thresholds and anomaly maps stay as they are; its old exports (ONNX, OpenVINO at
    each precision) lack the branch and are replaced."""
    from linewatch.detector.global_fit import add_global_branch
    from linewatch.detector.model_files import OPENVINO_EXPORTS, read_metadata
    from linewatch.detector.runtimes.onnx_export import export_onnx
    from linewatch.detector.runtimes.openvino_export import export_openvino

    s = load_settings()
    store = Path(s.artifact_store_root).resolve()
    if Path(model).resolve().is_relative_to(store):
        # a registered version's files are what the workers load: changing them in place would change its scores
        # under the same version name, unannounced
        fail(f"{model} is a registered model version (under the artifact store {store}): copy it elsewhere, run "
             "fit-global there, and register the result as a new version")
    with user_errors():
        had = set(read_metadata(model).get("exports", {}))
        record = add_global_branch(model, device_name(device) or s.detector.device, s.backbone.weights)
        t = read_metadata(model)["thresholds"]
        typer.echo(f"global branch written to {Path(model) / record['file']}: {record['fitted_on']}, global "
                   f"threshold {t['global']:.4g} ({t['global_calibration']['held_out_goods']} held-out goods), "
                   f"fusion scale {t['image'] / t['global']:.4g}")
        if export and "onnx" in had:
            export_onnx(model, s.backbone.weights)
            typer.echo(f"ONNX export written again to {Path(model) / 'model.onnx'}")
        for precision, key in OPENVINO_EXPORTS.items():
            if export and key in had:
                export_openvino(model, precision, s.backbone.weights)
                typer.echo(f"OpenVINO {precision} export written again")
