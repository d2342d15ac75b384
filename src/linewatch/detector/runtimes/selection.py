"""Which runtime scores: ``detector.runtime`` (``--runtime``) = ``torch``, ``onnxruntime``, ``openvino`` or ``auto``.

* ``torch``: eager PyTorch (:func:`linewatch.detector.scoring.forward_scores`), any device and precision.
* ``onnxruntime`` / ``openvino``: the model's ONNX export (``linewatch export``), CPU and float32 only; its parity
  with eager PyTorch was checked when it was exported (:mod:`.onnx_export`). ``openvino`` scores with the model's
  OpenVINO IR where it has one (``linewatch export --format openvino``, :mod:`.openvino_export`), else with the ONNX.
* ``openvino-bf16`` / ``openvino-int8``: the reduced-precision IR of that name (opt-in, CPU only), scoring with the
  thresholds recalibrated on it (:func:`runtime_thresholds`); refused where this CPU would run it at another
  precision than it was calibrated at (``executes`` of its record: bf16 asked on a CPU without bf16 runs f32).
* ``torch-compile``, ``onnxruntime-cuda``, ``onnxruntime-tensorrt``: CUDA at float32, opt-in, each checked against
  eager PyTorch at load (:mod:`.gpu`).
* ``auto``: the fastest runtime whose scores and maps match eager PyTorch on the model's own held-out goods to
  ``PARITY_TOLERANCE`` (:mod:`.parity`), all measured here at load time on the same batch (one warm-up run each,
  then one timed run); eager PyTorch where there is no export, no other runtime is installed or loads, the device
  is a GPU or the precision is reduced (auto never picks a reduced-precision export or a GPU runtime: both are
  opt-in). The choice and its figures are logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..model_files import ModelFileError, export_path
from . import GPU_RUNTIMES, REDUCED_PRECISION, RUNTIMES, RuntimeChoiceError
from .parity import PARITY_TOLERANCE, compare, parity_inputs

log = logging.getLogger(__name__)

Forward = Callable[[Any], tuple[np.ndarray, ...]]  # scores, maps[, global scores]
EXPORT_RUNTIMES = ("onnxruntime", "openvino")  # the runtimes of the ONNX export, in the order auto tries them


def export_forward(runtime: str, path, threads: int) -> Forward:
    """The forward of ``runtime`` (one of ``EXPORT_RUNTIMES`` or ``REDUCED_PRECISION``) on the export at ``path``.

    Raises:
        ImportError: the runtime is not installed. The runtime's own errors (a file it cannot load).
    """
    if runtime == "onnxruntime":
        from .onnx_runtime import OnnxRuntimeForward

        return OnnxRuntimeForward(path, threads)
    from .openvino_runtime import OpenVinoForward

    return OpenVinoForward(path, threads, REDUCED_PRECISION.get(runtime, "fp32"))


def export_of(model, runtime: str) -> tuple[str | None, Path | None]:
    """The export ``runtime`` scores with: its key in ``exports`` and its checked file, (None, None) when the model
    has none (``openvino``: its IR, else its ONNX export).

    Raises:
        ModelFileError: the export is recorded but its files fail their checks (:func:`..model_files.export_path`).
    """
    for key in {"onnxruntime": ("onnx",), "openvino": ("openvino", "onnx")}.get(runtime, (runtime,)):
        path = export_path(model.path, model.metadata, key)
        if path is not None:
            return key, path
    return None, None


def runtime_thresholds(metadata: dict[str, Any], runtime: str) -> dict[str, Any]:
    """The thresholds ``runtime`` scores with: those recalibrated on a reduced-precision export
    (``exports.<runtime>.thresholds``), model.json's ``thresholds`` for every other runtime."""
    if runtime in REDUCED_PRECISION:
        return metadata["exports"][runtime]["thresholds"]
    return metadata["thresholds"]


def select_forward(runtime: str, *, model, device: torch.device, precision: str, torch_forward: Forward,
                   prepare: Callable[[np.ndarray], np.ndarray], threads: int) -> tuple[str, Forward]:
    """The runtime's name and its forward (uint8 (B, 3, S, S) -> (scores float32 (B,), maps float32 (B, 1, S, S)),
    with a global branch its distances float32 (B,) third).

    Args:
        runtime: one of ``RUNTIMES``.
        model: the :class:`..model_files.LoadedModel` (its directory and metadata name the export).
        device, precision: what eager PyTorch runs at (:func:`..devices.precision_of`).
        torch_forward: eager PyTorch's forward, the reference.
        prepare: the scorer's image -> uint8 (n, 3, S, S) model input windows (the held-out goods of the parity check
            go through it).
        threads: intra-op threads of an export runtime's session (:mod:`.threads`).
    Raises:
        RuntimeChoiceError (a ValueError): unknown runtime, or an export runtime asked for on a GPU or at reduced
            precision.
        ModelFileError: an export runtime asked for and the model has no export, or one that fails its checksum.
        ImportError: an export runtime asked for and not installed.
    """
    if runtime not in RUNTIMES:
        raise RuntimeChoiceError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch":
        return "torch", torch_forward
    if runtime in GPU_RUNTIMES:
        from .gpu import gpu_forward

        onnx = None if runtime == "torch-compile" else export_of(model, "onnxruntime")[1]
        return runtime, gpu_forward(runtime, model=model, device=device, precision=precision, onnx_path=onnx,
                                    torch_forward=torch_forward, prepare=prepare)
    cpu_fp32 = device.type == "cpu" and precision == "float32"
    if runtime != "auto":
        if not cpu_fp32:
            raise RuntimeChoiceError(f"runtime {runtime} scores on the CPU (its reference: eager PyTorch at float32; "
                                     f"asked: {device.type}, {precision}); use --device cpu or --runtime torch")
        key, path = export_of(model, runtime)
        if path is None:
            fmt = ("openvino --precision " + REDUCED_PRECISION[runtime]) if runtime in REDUCED_PRECISION else "onnx"
            raise ModelFileError(f"{model.path}: no export for runtime {runtime}; run `linewatch export --model "
                                 f"{model.path} --format {fmt}` first, or use --runtime torch")
        record = model.metadata["exports"][key]
        checked = record.get("parity", {}).get(runtime)
        if checked is not None and not checked.get("passed"):
            raise RuntimeChoiceError(f"{model.path}: {runtime} did not match eager PyTorch when the model was exported "
                                     f"(scores {checked['score_rel']:.1e}, maps {checked['map_rel']:.1e} relative); "
                                     "use --runtime onnxruntime or torch")
        forward = export_forward(runtime, path, threads)
        if runtime in REDUCED_PRECISION and getattr(forward, "executes", None) != record.get("executes"):
            raise RuntimeChoiceError(
                f"{model.path}: {runtime}'s thresholds were calibrated where OpenVINO executed it at "
                f"{record.get('executes')}, and this CPU executes it at {getattr(forward, 'executes', None)}: its "
                f"scores would not fit them; export it again here (linewatch export --format openvino --precision "
                f"{REDUCED_PRECISION[runtime]}) or use --runtime openvino")
        return runtime, forward
    return _auto(model, cpu_fp32, device, precision, torch_forward, prepare, threads)


def _auto(model, cpu_fp32: bool, device: torch.device, precision: str, torch_forward: Forward,
          prepare: Callable[[np.ndarray], np.ndarray], threads: int) -> tuple[str, Forward]:
    if not cpu_fp32:
        log.info("runtime auto: torch (%s at %s; the exports score on the CPU at float32)", device.type, precision)
        return "torch", torch_forward
    candidates: dict[str, Forward] = {}
    for name in EXPORT_RUNTIMES:
        try:
            _, path = export_of(model, name)
            if path is not None:
                candidates[name] = export_forward(name, path, threads)
        except ModelFileError as exc:
            log.warning("runtime auto: %s left out; its export is not usable: %s", name, exc)
        except Exception as exc:  # noqa: BLE001 -- not installed, or a file it cannot load: others still score
            log.info("runtime auto: %s left out (%s: %s)", name, type(exc).__name__, exc)
    if not candidates:
        log.info("runtime auto: torch (model %s has %s)", model.version, "no usable export" if
                 model.metadata.get("exports") else "no export; `linewatch export` makes one")
        return "torch", torch_forward
    inputs, on = parity_inputs(model.metadata, prepare, model.image_size)
    reference, torch_s = _timed(torch_forward, inputs)
    speeds, notes = {"torch": len(inputs) / torch_s}, []
    forwards: dict[str, Forward] = {"torch": torch_forward}
    for name, forward in candidates.items():
        result, seconds = _timed(forward, inputs)
        parity = compare(reference, result, on)
        notes.append(f"{name} {len(inputs) / seconds:.1f} images/s, scores {parity.score_rel:.1e} and maps "
                     f"{parity.map_rel:.1e} relative to torch{'' if parity.passed else ' (does not match: left out)'}")
        if parity.passed:
            speeds[name], forwards[name] = len(inputs) / seconds, forward
    chosen = max(speeds, key=speeds.__getitem__)
    log.info("runtime auto: %s for model %s (%d threads; %d %s, tolerance %g): torch %.1f images/s; %s", chosen,
             model.version, threads, len(inputs), on, PARITY_TOLERANCE, speeds["torch"], "; ".join(notes) or
             "no other runtime loads")
    return chosen, forwards[chosen]


def _timed(forward: Forward, inputs: np.ndarray) -> tuple[tuple[np.ndarray, ...], float]:
    """``forward(inputs)`` after one warm-up run, and the seconds the second run took."""
    forward(inputs)
    started = time.perf_counter()
    out = forward(inputs)
    return out, time.perf_counter() - started
