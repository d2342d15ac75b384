"""Speed benchmark of the STPM core: scoring throughput, teacher against full scoring, training epochs; and the
inference runtimes side by side.

    python bench/speed.py [--model MODEL_DIR] [--devices cpu cuda] [--batches 1 4 8 16 32]
    python bench/speed.py --runtimes [--model MODEL_DIR] [--batches 1 4 8 16] [--threads 1 2] [--precisions bf16 int8]

``--runtimes``: images/s of each runtime (eager PyTorch, ONNX Runtime, OpenVINO at fp32 from its IR, and with
``--precisions`` OpenVINO at bf16/int8) x batch x intra-op threads on the CPU, its ratio to eager PyTorch, the
largest relative score difference from eager PyTorch and whether every verdict is the same (each runtime at its own
thresholds: a reduced precision's are recalibrated on it), in one table. The runtimes take turns call by call (each
cell's median over ``--repeats`` turns), so a load that comes and goes on a shared machine weighs on all of them
alike. The model is exported first where an export is missing. Where CUDA exists, a second table follows: eager
PyTorch at float32 and autocast, ``torch-compile`` (CUDA graphs), ONNX Runtime's CUDA and TensorRT providers.

Measured side by side in one run, on real bottle images (absolute times on shared machines are
noisy; the ratios are the result). Without ``--model`` a 1-epoch model is trained first (weights do
not change the cost). Prints a table and writes ``bench/results/speed.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Median seconds of ``fn`` over ``repeats`` runs after two warm-up runs."""
    for _ in range(2):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path)
    parser.add_argument("--devices", nargs="+", default=None, help="default: cpu, plus cuda when present")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="default bench/results/speed.json "
                        "(runtimes.json with --runtimes)")
    parser.add_argument("--runtimes", action="store_true", help="only the runtimes table (see above)")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="intra-op threads (--runtimes)")
    parser.add_argument("--precisions", nargs="*", default=[], choices=["bf16", "int8"],
                        help="also OpenVINO at these opt-in precisions (--runtimes; exported first where missing)")
    args = parser.parse_args()
    args.out = args.out or ROOT / "bench" / "results" / ("runtimes.json" if args.runtimes else "speed.json")
    if args.runtimes and args.batches == parser.get_default("batches"):
        args.batches = [1, 4, 8, 16]
    if args.runtimes and args.repeats == parser.get_default("repeats"):
        args.repeats = 3  # 24 cells: a few minutes on 2 cores

    import torch

    from linewatch.contracts.settings import Settings
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.training import TrainConfig, train

    bottle = open_dataset(Settings().data_root / "mvtec_ad" / "bottle")
    model_dir = args.model
    if model_dir is None:
        model_dir = args.out.parent / "models" / "speed-1epoch"
        if not (model_dir / "model.json").is_file():
            config = TrainConfig(epochs=1, device="cpu", allow_under_calibrated=True)  # timing only, not calibration
            train(bottle.train[:16], model_dir, config, progress=False)
    if args.runtimes:
        return _runtimes(model_dir, [s.path.read_bytes() for s in bottle.test], args)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    encoded = [s.path.read_bytes() for s in bottle.test[:32]]
    rows = []
    for device in devices:
        rows += _measure(device, model_dir, encoded, bottle.train[: args.train_images], args)
    print()
    print(_table(rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(model_dir), "rows": rows,
                                    "threads": torch.get_num_threads()}, indent=2))
    print(f"\nwritten to {args.out}")
    return 0


def _measure(device: str, model_dir: Path, encoded: list[bytes], train_images: list[Path], args) -> list[dict]:
    """Every measurement on one device; prints each row as it is measured."""
    import numpy as np
    import torch

    from linewatch.detector.devices import autocast
    from linewatch.detector.imaging import decode_image
    from linewatch.detector.scoring import Scorer
    from linewatch.detector.stpm import normalize_features
    from linewatch.detector.training import TrainConfig, train

    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append({"device": device, **row})
        print(_line(rows[-1]), flush=True)

    scorer = Scorer(model_dir, device)
    dev = scorer.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    prepared = np.concatenate([scorer.prepare(decode_image(b)).tiles for b in encoded])  # square: 1 window each
    for batch in args.batches:
        x = np.concatenate([prepared] * (batch // len(prepared) + 1))[:batch]
        seconds = timed(lambda x=x: scorer.score(x), args.repeats, sync)
        add({"what": "score (prepared inputs)", "batch": batch, "images_per_s": batch / seconds})
    batch = 16
    x = torch.from_numpy(prepared[:batch]).to(dev)
    stpm = scorer.model.stpm

    @torch.inference_mode()
    def teacher_only() -> None:
        with autocast(dev):
            normalize_features(stpm.teacher(stpm.normalize_input(x)))

    def decode_and_score() -> None:
        scorer.score_images([decode_image(b) for b in encoded[:batch]])

    s_teacher = timed(teacher_only, args.repeats, sync)
    s_full = timed(lambda: scorer.score(prepared[:batch]), args.repeats, sync)
    s_decode = timed(decode_and_score, args.repeats, sync)
    for what, sec in (("teacher forward only", s_teacher), ("score (prepared inputs)", s_full),
                      ("decode PNG + prepare + score", s_decode)):
        add({"what": what, "batch": batch, "images_per_s": batch / sec, "time_vs_full_scoring": sec / s_full})

    # Training: 1 and 3 epochs; the difference is the cost of an epoch with the teacher's features cached.
    seconds = {}
    for epochs in (1, 3):
        t0 = time.perf_counter()
        train(train_images, args.out.parent / "models" / "speed-train", TrainConfig(epochs=epochs, device=device,
                                                                                    allow_under_calibrated=True),
              progress=False)
        seconds[epochs] = time.perf_counter() - t0
        add({"what": f"train {epochs} epoch(s), {len(train_images)} images", "batch": 32, "seconds": seconds[epochs]})
    per_epoch = (seconds[3] - seconds[1]) / 2
    teacher_epoch = (len(train_images) * 0.8 / batch) * s_teacher  # the teacher's cost per epoch, were it not cached
    add({"what": "train: seconds per extra epoch (cached teacher)", "batch": 32, "seconds": per_epoch,
         "note": f"an uncached teacher would add about {teacher_epoch:.1f} s per epoch "
                 f"({teacher_epoch / max(per_epoch, 1e-9):.0%})"})
    return rows


def _runtimes(model_dir: Path, encoded: list[bytes], args) -> int:
    """The runtimes table (module docstring); writes it as JSON to ``args.out``."""
    import os

    import numpy as np
    import torch

    from linewatch.detector.imaging import decode_image
    from linewatch.detector.model_files import read_metadata
    from linewatch.detector.runtimes.onnx_export import export_onnx
    from linewatch.detector.runtimes.openvino_export import export_openvino
    from linewatch.detector.runtimes.selection import EXPORT_RUNTIMES, export_forward, export_of, runtime_thresholds
    from linewatch.detector.scoring import Scorer

    exports = read_metadata(model_dir).get("exports", {})
    if "onnx" not in exports:
        print(f"exporting {model_dir} to ONNX ...", flush=True)
        export_onnx(model_dir)
    for precision in ["fp32", *args.precisions]:
        if ("openvino" if precision == "fp32" else f"openvino-{precision}") not in exports:
            print(f"exporting {model_dir} to OpenVINO IR at {precision} ...", flush=True)
            export_openvino(model_dir, precision)
    scorer = Scorer(model_dir, "cpu", precision="float32", runtime="torch")
    meta = read_metadata(model_dir)
    names = [*EXPORT_RUNTIMES, *(f"openvino-{p}" for p in args.precisions)]
    paths = {name: export_of(scorer.model, name)[1] for name in names}
    step = max(1, len(encoded) // max(args.batches))  # good and defective bottles alike
    prepared = np.concatenate([scorer.windows(decode_image(b)) for b in encoded[::step][: max(args.batches)]])
    # each runtime's verdicts at its own thresholds (a reduced precision's are recalibrated on it)
    thresholds = {name: float(runtime_thresholds(meta, name)["image"]) for name in ["torch", *names]}
    rows = []
    print(f"{'runtime':<14}{'threads':>8}{'batch':>6}{'images/s':>10}{'x torch':>9}{'max score diff':>16}"
          f"{'verdicts':>10}", flush=True)
    for threads in args.threads:
        torch.set_num_threads(threads)
        runtimes = {"torch": scorer.torch_forward,
                    **{name: export_forward(name, paths[name], threads) for name in names}}
        for batch in args.batches:
            x = prepared[:batch]
            outputs = {name: forward(x) for name, forward in runtimes.items()}  # also the warm-up
            times: dict[str, list[float]] = {name: [] for name in runtimes}
            for _ in range(args.repeats):
                for name, forward in runtimes.items():
                    t0 = time.perf_counter()
                    forward(x)
                    times[name].append(time.perf_counter() - t0)
            reference = outputs["torch"][0].astype(np.float64)
            torch_s = statistics.median(times["torch"])
            for name in runtimes:
                seconds = statistics.median(times[name])
                scores = outputs[name][0].astype(np.float64)
                row = {"runtime": name, "threads": threads, "batch": batch, "images_per_s": batch / seconds,
                       "ratio_to_torch": torch_s / seconds,
                       "max_score_rel_diff": float(np.max(np.abs(scores - reference) / np.abs(reference))),
                       "same_verdicts": bool(np.array_equal(scores > thresholds[name],
                                                            reference > thresholds["torch"]))}
                rows.append(row)
                print(f"{name:<14}{threads:>8}{batch:>6}{row['images_per_s']:>10.1f}{row['ratio_to_torch']:>9.2f}"
                      f"{row['max_score_rel_diff']:>16.1e}{'same' if row['same_verdicts'] else 'DIFFER':>10}",
                      flush=True)
    if torch.cuda.is_available():
        rows += _gpu_runtimes(model_dir, prepared, args)
    load = os.getloadavg()
    print(f"\nmodel {model_dir} ({scorer.image_size} px, {read_metadata(model_dir)['backbone']}); load average "
          f"{load[0]:.1f} / {load[1]:.1f} on {os.cpu_count()} CPUs (a shared machine: absolute figures are under load)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"model": str(model_dir), "image_size": scorer.image_size, "rows": rows,
                                    "load_average": load, "repeats": args.repeats}, indent=2))
    print(f"written to {args.out}")
    return 0


def _gpu_runtimes(model_dir: Path, prepared, args) -> list[dict]:
    """The GPU table: images/s of eager PyTorch at float32 and at the CUDA default (bfloat16/float16 autocast),
    ``torch-compile`` (CUDA graphs), ``onnxruntime-cuda`` and ``onnxruntime-tensorrt`` (float32, each checked against
    eager PyTorch when it loads) x batch, taking turns call by call; a runtime that cannot load is listed with why."""
    import numpy as np
    import torch

    from linewatch.detector.scoring import Scorer

    scorers, rows = {}, []
    for name, runtime, precision in (("torch fp32", "torch", "float32"), ("torch autocast", "torch", "auto"),
                                     ("torch-compile", "torch-compile", "float32"),
                                     ("onnxruntime-cuda", "onnxruntime-cuda", "float32"),
                                     ("onnxruntime-tensorrt", "onnxruntime-tensorrt", "float32")):
        try:
            scorers[name] = Scorer(model_dir, "cuda", precision=precision, runtime=runtime)
        except Exception as exc:  # noqa: BLE001 -- the table says why a runtime is missing
            print(f"{name}: not measured ({type(exc).__name__}: {exc})", flush=True)
            rows.append({"device": "cuda", "runtime": name, "error": f"{type(exc).__name__}: {exc}"})
    print(f"\nGPU ({torch.cuda.get_device_name()}):\n{'runtime':<22}{'batch':>6}{'images/s':>10}{'x torch fp32':>14}"
          f"{'max score diff':>16}", flush=True)
    for batch in args.batches:
        x = np.concatenate([prepared] * (batch // len(prepared) + 1))[:batch]
        outputs = {name: s.score(x).image_scores for name, s in scorers.items()}  # warm-up (compiles, builds)
        times: dict[str, list[float]] = {name: [] for name in scorers}
        for _ in range(args.repeats):
            for name, s in scorers.items():
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                s.score(x)
                torch.cuda.synchronize()
                times[name].append(time.perf_counter() - t0)
        reference = outputs["torch fp32"].astype(np.float64)
        base = statistics.median(times["torch fp32"])
        for name in scorers:
            seconds = statistics.median(times[name])
            row = {"device": "cuda", "runtime": name, "batch": batch, "images_per_s": batch / seconds,
                   "ratio_to_torch": base / seconds,
                   "max_score_rel_diff": float(np.max(np.abs(outputs[name] - reference) / np.abs(reference)))}
            rows.append(row)
            print(f"{name:<22}{batch:>6}{row['images_per_s']:>10.1f}{row['ratio_to_torch']:>14.2f}"
                  f"{row['max_score_rel_diff']:>16.1e}", flush=True)
    return rows


def _line(r: dict) -> str:
    value = f"{r['images_per_s']:8.1f} images/s" if "images_per_s" in r else f"{r['seconds']:8.1f} s       "
    ratio = f"  time {r['time_vs_full_scoring']:.2f} x full scoring" if "time_vs_full_scoring" in r else ""
    note = f"  ({r['note']})" if "note" in r else ""
    return f"{r['device']:<5} {r['what']:<48} batch {r['batch']:>3}  {value}{ratio}{note}"


def _table(rows: list[dict]) -> str:
    return "\n".join(_line(r) for r in rows)


if __name__ == "__main__":
    sys.exit(main())
