"""``linewatch export --format onnx``: the whole scoring graph as ``model.onnx`` beside the model's files.

What is exported is :meth:`linewatch.detector.stpm.STPM.forward` itself, traced by torch's TorchScript-based ONNX
exporter (``torch.onnx.export(..., dynamo=False)``; it needs neither network nor the ``onnxscript`` package): the
input normalisation, the teacher and student pyramids, the channel-L2 normalisation (Eq. 1), the stage maps
(Eq. 4), their bilinear upsampling and product (Eq. 5), the Gaussian smoothing and the image score (its maximum);
and, for a model with a global branch (:mod:`..global_branch`), the pooled teacher features' Mahalanobis distance
(output ``global_scores``) and the fused image score (``image_scores``). So no step of the scoring is done twice
or differently in Python. Opset 18; the batch axis is dynamic, the image size is the model's (``image_size`` of
model.json), float32 throughout.

Before the export is recorded, ONNX Runtime must reproduce eager PyTorch on the model's own held-out goods to
``PARITY_TOLERANCE`` (:mod:`.parity`); otherwise nothing is recorded and :class:`ExportError` says by how much it
differed. OpenVINO, which scores from the same file, is measured too where it is installed, and ``--runtime
openvino`` refuses an export on which it did not match. The record, ``exports.onnx`` in model.json::

    {"file": "model.onnx", "sha256": ..., "weights_sha256": <the student weights it was exported from>,
     "global_sha256": <the global branch it was exported with, absent without one>,
     "format": "onnx", "opset": 18, "precision": "float32", "input": {"name": "images", "dtype": "uint8",
     "shape": ["batch", 3, S, S]}, "outputs": {...}, "exporter": ..., "torch": ..., "onnxruntime": ...,
     "parity": {"onnxruntime": {"images", "score_rel", "map_rel", "global_rel", "on", "tolerance", "passed"},
                "openvino": {...}}, "created_at": ...}
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from linewatch.contracts.files import sha256_file

from ..model_files import EXPORTS_FIELD, ONNX_FILE, read_metadata, write_metadata
from .onnx_runtime import GLOBAL_OUTPUT, INPUT, OUTPUTS, OnnxRuntimeForward
from .parity import compare, parity_inputs
from .threads import intra_op_threads

log = logging.getLogger(__name__)

OPSET = 18
FORMATS = ("onnx",)


class ExportError(ValueError):
    """An export that does not reproduce eager PyTorch, or a format this release cannot write."""


def export_onnx(model_dir: Path, teacher_weights: Path | None = None) -> dict[str, Any]:
    """Export the scoring graph of ``model_dir`` to ``model_dir/model.onnx`` and record it in model.json.

    Returns the record (module docstring). A previous export is replaced only once the new one has passed.

    Raises:
        ModelFileError, WeightsNotFoundError: the model cannot be loaded.
        ExportError: ONNX Runtime differs from eager PyTorch by more than the tolerance (nothing is recorded).
        OSError: the directory cannot be written.
    """
    from ..scoring import Scorer  # the scorer imports the runtimes; this function is their only user of it

    model_dir = Path(model_dir)
    scorer = Scorer(model_dir, "cpu", teacher_weights, precision="float32", runtime="torch")
    size = scorer.image_size
    outputs = graph_outputs(scorer.model.stpm)
    target = model_dir / ONNX_FILE
    tmp = model_dir / f".{ONNX_FILE}.tmp"
    try:
        trace_onnx(scorer.model.stpm, size, tmp)
        inputs, on = parity_inputs(scorer.model.metadata, scorer.windows, size)
        reference = scorer.torch_forward(inputs)
        parity = compare(reference, OnnxRuntimeForward(tmp, intra_op_threads())(inputs), on)
        by_runtime = {"onnxruntime": parity.record(), **_other_runtimes(tmp, reference, inputs, on)}
        if not parity.passed:
            raise ExportError(
                f"{model_dir}: ONNX Runtime differs from eager PyTorch on {parity.images} {on} by "
                f"{parity.score_rel:.2e} (scores) and {parity.map_rel:.2e} (maps) relative, more than "
                f"{parity.tolerance:g}; nothing was exported")
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    import onnxruntime

    meta = read_metadata(model_dir)
    shapes = {OUTPUTS[0]: ["batch"], OUTPUTS[1]: ["batch", 1, size, size], GLOBAL_OUTPUT: ["batch"]}
    record = {
        "file": ONNX_FILE, "sha256": sha256_file(target), "weights_sha256": meta["weights_sha256"],
        **({"global_sha256": meta["global"]["sha256"]} if GLOBAL_OUTPUT in outputs else {}),
        "format": "onnx", "opset": OPSET, "precision": "float32",
        "input": {"name": INPUT, "dtype": "uint8", "shape": ["batch", 3, size, size]},
        "outputs": {name: {"dtype": "float32", "shape": shapes[name]} for name in outputs},
        "exporter": "torch.onnx.export (TorchScript)", "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__, "parity": by_runtime,
        "created_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    meta.setdefault(EXPORTS_FIELD, {})["onnx"] = record
    write_metadata(model_dir, meta)
    return record


def _other_runtimes(path: Path, reference: tuple[np.ndarray, ...], inputs: np.ndarray,
                    on: str) -> dict[str, dict[str, Any]]:
    """The parity records of the export's other runtimes installed here (OpenVINO), for ``--runtime`` to check."""
    from .openvino_runtime import OpenVinoForward

    try:
        forward = OpenVinoForward(path, intra_op_threads())
    except Exception as exc:  # noqa: BLE001 -- not installed or cannot compile: no record, so never chosen unchecked
        log.info("OpenVINO left out of the export's parity check: %s", exc)
        return {}
    return {"openvino": compare(reference, forward(inputs), on).record()}


def export_or_warn(model_dir: Path, teacher_weights: Path | None = None) -> dict[str, Any] | None:
    """:func:`export_onnx` for a freshly trained model (the trainer's candidates, ``linewatch up``'s default model):
    the record, or None with a warning where the export failed; the model stays usable (runtime ``auto`` then
    scores with eager PyTorch), so a failed export never loses a training."""
    try:
        record = export_onnx(model_dir, teacher_weights)
    except Exception as exc:  # noqa: BLE001 -- an export is an optimisation, never a reason to lose a model
        log.warning("%s: no ONNX export (%s); runtime auto will score with eager PyTorch", model_dir, exc)
        return None
    log.info("%s: ONNX export matches eager PyTorch to %.1e (scores) and %.1e (maps) relative", model_dir,
             record["parity"]["onnxruntime"]["score_rel"], record["parity"]["onnxruntime"]["map_rel"])
    return record


def graph_outputs(stpm: torch.nn.Module) -> tuple[str, ...]:
    """The graph's output names, in :meth:`..stpm.STPM.forward`'s order (``global_scores`` third with a branch)."""
    return (*OUTPUTS, GLOBAL_OUTPUT) if getattr(stpm, "global_branch", None) is not None else OUTPUTS


def trace_onnx(stpm: torch.nn.Module, size: int, path: Path) -> None:
    """Write ``stpm``'s forward as ONNX to ``path`` (dynamic batch axis, outputs :func:`graph_outputs`), traced on a
    seeded uint8 batch of 2 (the OpenVINO IR, :mod:`.openvino_export`, is converted from this graph too)."""
    example = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 3, size, size), dtype=np.uint8))
    batch, outputs = {0: "batch"}, graph_outputs(stpm)
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation and that it leaves strided slices unfolded; neither
        # changes the graph's values (the parity check measures them).
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(stpm.eval(), (example,), str(path), input_names=[INPUT], output_names=list(outputs),
                          opset_version=OPSET, dynamo=False, do_constant_folding=True,
                          dynamic_axes={INPUT: batch, **{name: batch for name in outputs}})
