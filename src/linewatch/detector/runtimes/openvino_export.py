"""``linewatch export --format openvino [--precision fp32|bf16|int8]``: the whole scoring graph as OpenVINO IR
(``openvino.save_model``: an ``.xml`` graph and a ``.bin`` of its weights) beside the model's files.

The IR is converted (``openvino.convert_model``) from the same traced ONNX graph as :mod:`.onnx_export`
(:func:`.onnx_export.trace_onnx`: :meth:`linewatch.detector.stpm.STPM.forward`, input normalisation to image
score), and saved with its weights at float32 (``compress_to_fp16=False``; OpenVINO's default would halve them).
What a worker gains over reading ``model.onnx``: no ONNX import at each load, and the reduced-precision variants.
A model with a global branch (:mod:`..global_branch`) is exported with it (its ``global_scores`` output, the record's
``global_sha256``), and a reduced precision recalibrates the global threshold with the others.

* ``fp32`` -> ``model.xml``/``model.bin``, ``exports.openvino``: must reproduce eager PyTorch on the model's own
  held-out goods to :data:`.parity.PARITY_TOLERANCE`, or nothing is recorded (:class:`.onnx_export.ExportError`).
  ``--runtime openvino`` and ``auto`` score with it when present (else with ``model.onnx``).
* ``bf16`` -> ``model-bf16.xml``/``.bin``, ``exports.openvino-bf16``: the same IR, compiled with
  ``INFERENCE_PRECISION_HINT`` bf16; where the CPU has no bf16 instructions OpenVINO runs it at f32 and the record
  says so (``executes``).
* ``int8`` -> ``model-int8.xml``/``.bin``, ``exports.openvino-int8``: NNCF post-training quantisation
  (:func:`.reduced_precision.quantize_int8`, calibrated on the model's training goods).

Reduced precision is opt-in (``--runtime openvino-bf16|openvino-int8``; ``auto`` never picks it) and scores with
its own thresholds, recalibrated on the held-out goods scored at that precision by the training's rule
(:func:`.reduced_precision.recalibrate`). The record (``exports.<runtime>`` in model.json)::

    {"file": "model.xml", "sha256", "data_file": "model.bin", "data_sha256", "weights_sha256", ["global_sha256",]
     "format": "openvino-ir", "precision", "inference_precision_hint", "executes", "cpu", "input", "outputs",
     "converted_from", "openvino", "torch", "created_at",
     fp32: "parity": {"openvino": {"images", "score_rel", "map_rel", "on", "tolerance", "passed"}},
     bf16/int8: "thresholds": {as model.json's}, "against_float32": {...}, int8: "quantisation": {...}}
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from linewatch.contracts.files import sha256_file

from ..model_files import EXPORTS_FIELD, OPENVINO_EXPORTS, OPENVINO_FILES, read_metadata, write_metadata
from .onnx_export import OPSET, ExportError, graph_outputs, trace_onnx
from .onnx_runtime import GLOBAL_OUTPUT, INPUT, OUTPUTS
from .openvino_runtime import HINTS, OpenVinoForward
from .parity import compare, parity_inputs
from .threads import intra_op_threads

log = logging.getLogger(__name__)

PRECISIONS = tuple(OPENVINO_FILES)  # fp32, bf16, int8


def export_openvino(model_dir: Path, precision: str = "fp32", teacher_weights: Path | None = None) -> dict[str, Any]:
    """Write the OpenVINO IR of ``model_dir`` at ``precision`` beside its files and record it in model.json.

    Returns the record (module docstring). A previous export of that precision is replaced only once the new one
    has passed its check (fp32: parity; bf16/int8: recalibration on the held-out goods).

    Raises:
        ModelFileError, WeightsNotFoundError: the model cannot be loaded.
        ExportError: unknown precision; fp32 differs from eager PyTorch by more than the tolerance; bf16/int8 with
            no readable held-out good to recalibrate on; int8 without NNCF or with no readable training good.
        ImportError: openvino is not installed. OSError: the directory cannot be written.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"OpenVINO export precision must be one of {PRECISIONS}, got {precision!r}")
    import openvino as ov

    from ..scoring import Scorer  # the scorer imports the runtimes; the exports are their only users of it
    from .reduced_precision import quantize_int8, recalibrate

    model_dir = Path(model_dir)
    scorer = Scorer(model_dir, "cpu", teacher_weights, precision="float32", runtime="torch")
    size = scorer.image_size
    names = OPENVINO_FILES[precision]
    work = Path(tempfile.mkdtemp(prefix=".openvino.", dir=model_dir))
    try:
        trace_onnx(scorer.model.stpm, size, work / "graph.onnx")
        graph = ov.convert_model(str(work / "graph.onnx"))
        extra: dict[str, Any] = {}
        if precision == "int8":
            graph, extra["quantisation"] = quantize_int8(graph, scorer)
        ov.save_model(graph, str(work / names[0]), compress_to_fp16=False)
        forward = OpenVinoForward(work / names[0], intra_op_threads(), precision)
        if precision == "fp32":
            inputs, on = parity_inputs(scorer.model.metadata, scorer.windows, size)
            parity = compare(scorer.torch_forward(inputs), forward(inputs), on)
            if not parity.passed:
                raise ExportError(
                    f"{model_dir}: OpenVINO IR differs from eager PyTorch on {parity.images} {on} by "
                    f"{parity.score_rel:.2e} (scores) and {parity.map_rel:.2e} (maps) relative, more than "
                    f"{parity.tolerance:g}; nothing was exported")
            extra["parity"] = {"openvino": parity.record()}
        else:
            extra.update(recalibrate(scorer, forward))
        for name in names:
            os.replace(work / name, model_dir / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    meta, outputs = read_metadata(model_dir), graph_outputs(scorer.model.stpm)
    shapes = {OUTPUTS[0]: ["batch"], OUTPUTS[1]: ["batch", 1, size, size], GLOBAL_OUTPUT: ["batch"]}
    record = {
        "file": names[0], "sha256": sha256_file(model_dir / names[0]),
        "data_file": names[1], "data_sha256": sha256_file(model_dir / names[1]),
        "weights_sha256": meta["weights_sha256"],
        **({"global_sha256": scorer.model.metadata["global"]["sha256"]} if GLOBAL_OUTPUT in outputs else {}),
        "format": "openvino-ir", "precision": precision,
        "inference_precision_hint": HINTS[precision], "executes": forward.executes, "cpu": cpu_description(),
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", 3, size, size]},
        "outputs": {name: {"dtype": "float32", "shape": shapes[name]} for name in outputs},
        "converted_from": f"ONNX opset {OPSET} (torch.onnx.export, TorchScript)", "openvino": ov.__version__,
        "torch": torch.__version__, **extra, "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    meta.setdefault(EXPORTS_FIELD, {})[OPENVINO_EXPORTS[precision]] = record
    write_metadata(model_dir, meta)
    return record


def openvino_export_or_warn(model_dir: Path, precision: str, teacher_weights: Path | None = None) -> dict | None:
    """:func:`export_openvino` for a freshly trained model (the trainer's candidates, ``trainer.export_openvino``):
    the record, or None with a warning where the export failed; the version is still registered (a worker on that
    precision's runtime then refuses it, saying why, and keeps its model)."""
    try:
        return export_openvino(model_dir, precision, teacher_weights)
    except Exception as exc:  # noqa: BLE001 -- an export is an optimisation, never a reason to lose a model
        log.warning("%s: no OpenVINO export at %s (%s)", model_dir, precision, exc)
        return None


def cpu_description() -> dict[str, Any]:
    """The CPU as OpenVINO sees it: ``name`` and ``capabilities`` (``OPTIMIZATION_CAPABILITIES``: ``BF16`` only
    where the processor has bf16 instructions, AVX512_BF16 or AMX)."""
    import openvino as ov

    core = ov.Core()
    return {"name": str(core.get_property("CPU", "FULL_DEVICE_NAME")),
            "capabilities": [str(c) for c in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")]}
