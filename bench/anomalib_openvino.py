"""linewatch's OpenVINO runtime against anomalib's OpenVINO inferencer, on the same STPM, end to end.

Both sides run the same model size: STPM with a ResNet-18 teacher and student cut after ``layer3`` (anomalib's
``Stfpm`` default: layers ``layer1``-``layer3``; linewatch's ``resnet18`` backbone), at 256x256, exported to
OpenVINO IR by each tool's own export and run by the same OpenVINO on the CPU, at the same
``INFERENCE_NUM_THREADS``. Weights do not change the cost, so neither side downloads any: linewatch's teacher is a
randomly initialised torchvision ResNet-18 saved to a file (seed 0), and anomalib's teacher is built with
``pre_trained=False``.

Set-up: anomalib is not a linewatch dependency. It runs in its own virtual environment, which also needs the
packages linewatch's scoring imports::

    python3.11 -m venv /work/ano-venv
    /work/ano-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /work/ano-venv/bin/pip install anomalib==2.7.0 openvino==2026.4.1 onnx onnxscript \\
        pydantic pydantic-settings simplejpeg kafka-python redis sqlalchemy crc32c
    PYTHONPATH=src nice -n 10 /work/ano-venv/bin/python bench/anomalib_openvino.py [--threads 1 2] [--repeats 5]

(``onnxscript``: anomalib 2.7 exports through torch's dynamo ONNX exporter.) linewatch comes from ``src`` through
``PYTHONPATH``, anomalib and OpenVINO from the venv.

What it does:

1. linewatch: without ``--model``, trains a 1-epoch model on the first 16 good bottle training images
   (``input_mode`` resize, as anomalib squeezes to 256x256; no global branch, so both graphs are STPM alone) in
   ``bench/results/models/anomalib-cmp-resnet18`` and exports it with ``linewatch export --format openvino`` at
   fp32 (:func:`linewatch.detector.runtimes.openvino_export.export_openvino`), scored by
   ``Scorer(model, "cpu", runtime="openvino", threads=N)``.
2. anomalib: ``Stfpm(backbone="resnet18")`` untrained, exported by its own ``to_openvino`` (what ``Engine.export``
   calls) with a dynamic input size, as ``Engine.export`` does by default, to ``bench/results/anomalib/``; scored
   by ``anomalib.deploy.OpenVINOInferencer(xml, device="CPU", config={"INFERENCE_NUM_THREADS": N})``.
3. 8 real bottle test images (good and defective), decoded once to uint8 RGB. Two inputs: the 900x900 frame as
   the camera gives it, and the same frame already resized to 256x256 (area interpolation).
4. Per thread count and input, several turns. In each turn the two take turns image by image:
   ``OpenVINOInferencer.predict(rgb)`` (one image at a time, the only way it predicts; its pre-processing, the
   graph and its result batch) and linewatch's ``Scorer.score_images([rgb])`` (its prepare, the graph, the
   stitch and the maximum); then linewatch's ``score_images`` of all 8 at once (batch 8), and each side's compiled
   graph alone on its own prepared input (batch 1). images/s are from the median turn; ratio = linewatch /
   anomalib; the last column is the batch-1 ratio within each turn, lowest to highest (paired, so a load that
   came and went in one turn moves both sides).

Before the timed part it waits up to ``--max-wait`` seconds for the 1-minute load average to fall under
``--max-load``, and prints the load at the start and the end. Writes ``bench/results/anomalib_openvino.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
LAYERS = ("layer1", "layer2", "layer3")
SIZE = 256


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="linewatch model dir (resnet18, 256 px, resize) with its IR")
    parser.add_argument("--teacher-weights", type=Path, help="resnet18 weights file; default: a random one")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="turns per cell (the median is reported)")
    parser.add_argument("--max-load", type=float, default=2.5, help="wait for a 1-minute load average under this")
    parser.add_argument("--max-wait", type=float, default=600, help="seconds to wait for it at most")
    parser.add_argument("--out", type=Path, default=RESULTS / "anomalib_openvino.json")
    args = parser.parse_args()

    import cv2

    from linewatch.contracts.settings import Settings
    from linewatch.detector.datasets import open_dataset

    bottle = open_dataset(Settings().data_root / "mvtec_ad" / "bottle")
    weights = args.teacher_weights or _random_resnet18(RESULTS / "models" / "resnet18-random.pth")
    model_dir = args.model or _linewatch_model(bottle.train[:16], weights, RESULTS / "models" / "anomalib-cmp-resnet18")
    ano_xml = _anomalib_export(RESULTS / "anomalib")
    step = max(1, len(bottle.test) // args.images)
    frames = [cv2.cvtColor(cv2.imread(str(s.path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
              for s in bottle.test[::step][: args.images]]
    inputs = {f"{frames[0].shape[1]}x{frames[0].shape[0]} frame": frames,
              f"{SIZE}x{SIZE}": [cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for f in frames]}

    load_start = _wait_for_load(args.max_load, args.max_wait)
    rows, info = [], {}
    for threads in args.threads:
        rows += _measure(threads, model_dir, weights, ano_xml, inputs, args.repeats, info)
    load_end = os.getloadavg()

    print()
    print(_table(rows))
    print()
    for line in _describe(info, load_start, load_end):
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"linewatch_model": str(model_dir), "anomalib_ir": str(ano_xml), "rows": rows,
                                    "info": info, "images": len(frames), "repeats": args.repeats,
                                    "load_average_start": load_start, "load_average_end": load_end,
                                    "cpus": os.cpu_count()}, indent=2, default=str))
    print(f"written to {args.out}")
    return 0


def _random_resnet18(path: Path) -> Path:
    """A randomly initialised torchvision ResNet-18 state dict (seed 0) at ``path`` (timing only)."""
    if not path.is_file():
        import torch
        import torchvision

        torch.manual_seed(0)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(torchvision.models.resnet18().state_dict(), path)
    return path


def _linewatch_model(images: list, weights: Path, out: Path) -> Path:
    """A 1-epoch resnet18 model at 256 px (resize geometry, STPM alone) with its fp32 OpenVINO IR, made once."""
    from linewatch.detector.model_files import read_metadata
    from linewatch.detector.runtimes.openvino_export import export_openvino
    from linewatch.detector.training import TrainConfig, train

    if not (out / "model.json").is_file():
        print(f"training the linewatch model {out} (1 epoch, {len(images)} images) ...", flush=True)
        config = TrainConfig(backbone="resnet18", teacher_weights=weights, image_size=SIZE, epochs=1, device="cpu",
                             input_mode="resize", global_branch=False, allow_under_calibrated=True)
        train(images, out, config, progress=False)
    if "openvino" not in read_metadata(out).get("exports", {}):
        print(f"exporting {out} to OpenVINO IR (fp32) ...", flush=True)
        export_openvino(out, "fp32", teacher_weights=weights)
    return out


def _anomalib_export(root: Path) -> Path:
    """anomalib's Stfpm (resnet18, layer1-layer3, untrained, teacher not pre-trained) exported by its own
    ``to_openvino`` with a dynamic input size (``Engine.export``'s default); made once. Returns the ``.xml``."""
    xml = root / "weights" / "openvino" / "model.xml"
    if xml.is_file():
        return xml
    import anomalib.models.image.stfpm.torch_model as stfpm_torch
    from anomalib.models import Stfpm
    from anomalib.models.components import TimmFeatureExtractor

    # Stfpm builds its teacher with pre_trained=True (a download); weights do not change the cost
    stfpm_torch.TimmFeatureExtractor = lambda *a, **k: TimmFeatureExtractor(*a, **{**k, "pre_trained": False})
    print(f"exporting anomalib's Stfpm to {root} ...", flush=True)
    model = Stfpm(backbone="resnet18", layers=LAYERS, evaluator=False, visualizer=False).eval()
    # opset 18: the dynamo exporter's own; its down-conversion to anomalib's default 14 fails on this graph
    return Path(model.to_openvino(root, onnx_kwargs={"opset_version": 18}))


def _wait_for_load(max_load: float, max_wait: float) -> tuple[float, float, float]:
    deadline = time.monotonic() + max_wait
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        print(f"load average {os.getloadavg()[0]:.2f} >= {max_load}: waiting ...", flush=True)
        time.sleep(20)
    return os.getloadavg()


def _measure(threads: int, model_dir: Path, weights: Path, ano_xml: Path, inputs: dict, repeats: int,
             info: dict) -> list[dict]:
    """Every cell at one thread count (module docstring, step 4); prints each row as it is measured."""
    import cv2
    import torch
    from anomalib.deploy import OpenVINOInferencer

    from linewatch.detector.scoring import Scorer

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    scorer = Scorer(model_dir, "cpu", teacher_weights=weights, precision="float32", runtime="openvino",
                    threads=threads)
    cwd = Path.cwd()
    os.chdir(ano_xml.parent)  # the inferencer writes its compile cache to ./openvino_cache
    try:
        inferencer = OpenVINOInferencer(ano_xml, device="CPU", config={"INFERENCE_NUM_THREADS": threads})
    finally:
        os.chdir(cwd)
    info.setdefault("anomalib", {})[threads] = _compiled_info(inferencer.model, ano_xml)
    info.setdefault("linewatch", {})[threads] = _compiled_info(scorer._forward.model, model_dir / "model.xml")

    def ano_graph(x):  # the compiled graph alone, on the inferencer's own pre-processed input
        return inferencer.model({inferencer.input_blob.any_name: x})

    rows = []
    for name, images in inputs.items():
        ano_in = [inferencer.pre_process(im) for im in images]
        lw_in = [scorer.windows(im) for im in images]
        calls = {  # each: one call per image (batch 1) or one for all
            "anomalib predict": [lambda im=im: inferencer.predict(im) for im in images],
            "linewatch score_images b1": [lambda im=im: scorer.score_images([im]) for im in images],
            "anomalib graph only": [lambda x=x: ano_graph(x) for x in ano_in],
            "linewatch graph only": [lambda x=x: scorer._forward(x) for x in lw_in],
            "linewatch score_images b8": [lambda ims=images: scorer.score_images(ims)],
        }
        for fns in calls.values():  # warm-up
            fns[0]()
        turns: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(repeats):
            per_image = [k for k, fns in calls.items() if len(fns) > 1]
            spent = dict.fromkeys(calls, 0.0)
            for i in range(len(images)):  # the two take turns image by image
                for k in per_image:
                    t0 = time.perf_counter()
                    calls[k][i]()
                    spent[k] += time.perf_counter() - t0
            for k in calls:
                if k not in per_image:
                    t0 = time.perf_counter()
                    calls[k][0]()
                    spent[k] += time.perf_counter() - t0
            for k in calls:
                turns[k].append(spent[k])
        ips = {k: len(images) / statistics.median(v) for k, v in turns.items()}
        row = {"threads": threads, "input": name, **{f"{k} images/s": v for k, v in ips.items()},
               "ratio b1": ips["linewatch score_images b1"] / ips["anomalib predict"],
               "ratio b8": ips["linewatch score_images b8"] / ips["anomalib predict"],
               "ratio graph only": ips["linewatch graph only"] / ips["anomalib graph only"],
               # paired within a turn: how far the load that came and went moved the b1 ratio
               "ratio b1 per turn": [a / b for a, b in zip(turns["anomalib predict"],
                                                           turns["linewatch score_images b1"], strict=True)],
               "turn seconds": turns}
        rows.append(row)
        print(_line(row), flush=True)
    return rows


def _compiled_info(compiled, xml: Path) -> dict:
    """What OpenVINO was asked and what it ran: properties, the IR's weight types and converter version, and how
    many executed layers ran at each runtime precision."""
    import openvino as ov

    ir = ov.Core().read_model(str(xml))
    constants = [op.get_output_element_type(0).get_type_name() for op in ir.get_ops()
                 if op.get_type_name() == "Constant"]
    executed: dict[str, int] = {}
    for op in compiled.get_runtime_model().get_ops():
        rt = op.get_rt_info()
        precision = rt["runtimePrecision"].astype(str) if "runtimePrecision" in rt else "?"
        executed[precision] = executed.get(precision, 0) + 1
    try:
        converted_by = ir.get_rt_info("Runtime_version").astype(str)
    except RuntimeError:
        converted_by = "?"
    return {
        "openvino": ov.get_version(), "ir_converted_by": converted_by, "ir_ops": len(ir.get_ops()),
        "ir_weights_bytes": xml.with_suffix(".bin").stat().st_size,
        "ir_constant_types": {t: constants.count(t) for t in sorted(set(constants))},
        "input": [f"{i.get_element_type().get_type_name()} {i.get_partial_shape()}" for i in ir.inputs],
        "outputs": [o.any_name for o in ir.outputs],
        **{k: _text(compiled.get_property(k)) for k in
           ("INFERENCE_PRECISION_HINT", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT", "NUM_STREAMS")},
        "executed_layers_by_precision": executed,
    }


def _text(value) -> str:
    """An OpenVINO property as text: a type by its name (``f32``), anything else as ``str`` gives it."""
    return value.get_type_name() if hasattr(value, "get_type_name") else str(value)


COLUMNS = [("anomalib predict images/s", "anomalib b1"), ("linewatch score_images b1 images/s", "linewatch b1"),
           ("linewatch score_images b8 images/s", "linewatch b8"), ("ratio b1", "b1 ratio"),
           ("ratio b8", "b8 ratio"), ("anomalib graph only images/s", "ano graph"),
           ("linewatch graph only images/s", "lw graph"), ("ratio graph only", "graph ratio")]


def _line(r: dict) -> str:
    spread = r["ratio b1 per turn"]
    return (f"{r['threads']:>7}  {r['input']:<16}" + "".join(f"{r[k]:>13.2f}" for k, _ in COLUMNS)
            + f"{min(spread):>9.2f}-{max(spread):.2f}")


def _table(rows: list[dict]) -> str:
    head = f"{'threads':>7}  {'input':<16}" + "".join(f"{h:>13}" for _, h in COLUMNS) + "  b1 ratio per turn"
    return "\n".join([head, *(_line(r) for r in rows),
                      "(images/s; ratio = linewatch / anomalib; anomalib predicts one image per call; the last column: "
                      "the b1 ratio within each turn, lowest-highest)"])


def _describe(info: dict, load_start, load_end) -> list[str]:
    lines = []
    for side in ("anomalib", "linewatch"):
        for threads, i in info.get(side, {}).items():
            lines.append(f"{side} threads={threads}: OpenVINO {i['openvino']} (IR converted by {i['ir_converted_by']})"
                         f"; IR {i['ir_ops']} ops, weights {i['ir_weights_bytes'] / 2**20:.1f} MiB, constants "
                         f"{i['ir_constant_types']}; input {i['input']}; outputs {i['outputs']}; compiled "
                         f"INFERENCE_PRECISION_HINT={i['INFERENCE_PRECISION_HINT']} INFERENCE_NUM_THREADS="
                         f"{i['INFERENCE_NUM_THREADS']} PERFORMANCE_HINT={i['PERFORMANCE_HINT']} NUM_STREAMS="
                         f"{i['NUM_STREAMS']}; executed layers by precision {i['executed_layers_by_precision']}")
    lines.append(f"load average (1/5/15 min) at start {load_start[0]:.2f} / {load_start[1]:.2f} / {load_start[2]:.2f}"
                 f", at end {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}, on {os.cpu_count()} CPUs")
    return lines


if __name__ == "__main__":
    sys.exit(main())
