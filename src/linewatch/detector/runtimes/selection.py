"""Which runtime scores: ``detector.runtime`` (``--runtime``) = ``torch``, ``onnxruntime`` or ``auto``.

* ``torch``: eager PyTorch (:func:`linewatch.detector.scoring.forward_scores`), any device and precision.
* ``onnxruntime``: the model's ONNX export (``linewatch export``), CPU and float32 only; its parity with eager
  PyTorch was checked when it was exported (:mod:`.onnx_export`).
* ``auto``: the fastest runtime whose scores and maps match eager PyTorch on the model's own held-out goods to
  ``PARITY_TOLERANCE`` (:mod:`.parity`), both measured here at load time on the same batch (one warm-up run each,
  then one timed run); eager PyTorch where there is no export, onnxruntime is not installed, the device is a GPU
  or the precision is reduced. The choice and its figures are logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..model_files import ModelFileError, export_path
from . import RUNTIMES, RuntimeChoiceError
from .parity import compare, parity_inputs

log = logging.getLogger(__name__)

Forward = Callable[[Any], tuple[np.ndarray, np.ndarray]]


def select_forward(runtime: str, *, model, device: torch.device, precision: str, torch_forward: Forward,
                   prepare: Callable[[np.ndarray], np.ndarray], threads: int) -> tuple[str, Forward]:
    """The runtime's name and its forward (uint8 (B, 3, S, S) -> (scores float32 (B,), maps float32 (B, 1, S, S))).

    Args:
        runtime: one of ``RUNTIMES``.
        model: the :class:`..model_files.LoadedModel` (its directory and metadata name the export).
        device, precision: what eager PyTorch runs at (:func:`..devices.precision_of`).
        torch_forward: eager PyTorch's forward, the reference.
        prepare: the scorer's image -> model input (the held-out goods of the parity check go through it).
        threads: intra-op threads of an ONNX Runtime session (:mod:`.threads`).
    Raises:
        RuntimeChoiceError (a ValueError): unknown runtime, or ``onnxruntime`` asked for on a GPU or at reduced
            precision.
        ModelFileError: ``onnxruntime`` asked for and the model has no export, or an export that fails its checksum.
        ImportError: ``onnxruntime`` asked for and not installed.
    """
    if runtime not in RUNTIMES:
        raise RuntimeChoiceError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if runtime == "torch":
        return "torch", torch_forward
    from .onnx_runtime import OnnxRuntimeForward

    cpu_fp32 = device.type == "cpu" and precision == "float32"
    if runtime == "onnxruntime":
        if not cpu_fp32:
            raise RuntimeChoiceError(f"runtime onnxruntime scores on the CPU at float32 (asked: {device.type}, "
                                     f"{precision}); use --device cpu or --runtime torch")
        path = export_path(model.path, model.metadata, "onnx")
        if path is None:
            raise ModelFileError(f"{model.path}: no ONNX export; run `linewatch export --model {model.path} "
                                 "--format onnx` first, or use --runtime torch")
        return "onnxruntime", OnnxRuntimeForward(path, threads)
    # auto
    if not cpu_fp32:
        log.info("runtime auto: torch (%s at %s; the exports score on the CPU at float32)", device.type, precision)
        return "torch", torch_forward
    try:
        path = export_path(model.path, model.metadata, "onnx")
    except ModelFileError as exc:
        log.warning("runtime auto: torch; the ONNX export is not usable: %s", exc)
        return "torch", torch_forward
    if path is None:
        log.info("runtime auto: torch (model %s has no export; `linewatch export` makes one)", model.version)
        return "torch", torch_forward
    try:
        candidate = OnnxRuntimeForward(path, threads)
    except Exception as exc:  # noqa: BLE001 -- not installed, or a file it cannot load: eager PyTorch still scores
        log.warning("runtime auto: torch; ONNX Runtime cannot load %s: %s", path, exc)
        return "torch", torch_forward
    inputs, on = parity_inputs(model.metadata, prepare, model.image_size)
    reference, torch_s = _timed(torch_forward, inputs)
    result, onnx_s = _timed(candidate, inputs)
    parity = compare(reference, result, on)
    figures = (f"{len(inputs) / torch_s:.1f} images/s with torch, {len(inputs) / onnx_s:.1f} with onnxruntime "
               f"({threads} threads); parity on {parity.images} {on}: scores {parity.score_rel:.1e}, "
               f"maps {parity.map_rel:.1e} relative (tolerance {parity.tolerance:g})")
    if not parity.passed:
        log.warning("runtime auto: torch for model %s; onnxruntime does not match it: %s", model.version, figures)
        return "torch", torch_forward
    chosen = "onnxruntime" if onnx_s < torch_s else "torch"
    log.info("runtime auto: %s for model %s: %s", chosen, model.version, figures)
    return chosen, candidate if chosen == "onnxruntime" else torch_forward


def _timed(forward: Forward, inputs: np.ndarray) -> tuple[tuple[np.ndarray, np.ndarray], float]:
    """``forward(inputs)`` after one warm-up run, and the seconds the second run took."""
    forward(inputs)
    started = time.perf_counter()
    out = forward(inputs)
    return out, time.perf_counter() - started
