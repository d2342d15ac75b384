"""GPU runtimes (CUDA), opt-in: ``torch-compile`` (``torch.compile`` in ``reduce-overhead`` mode, which replays each
batch size's kernels as a CUDA graph), and ONNX Runtime's CUDA and TensorRT execution providers on the model's ONNX
export (``onnxruntime-cuda``, ``onnxruntime-tensorrt``; they need the ``onnxruntime-gpu`` build and, for TensorRT,
its libraries).

Each runs at float32 and must match eager PyTorch at float32 on the model's own held-out goods to
:data:`.parity.PARITY_TOLERANCE` when it loads (:func:`gpu_forward`), or it is refused with the figures: the same
rule as the CPU runtimes. For that, choosing one turns TF32 off in the process (cuDNN convolutions and cuBLAS
matrix products): TF32 keeps 10 mantissa bits, about 1e-3 relative, which no runtime could match to 1e-5, and
ONNX Runtime's CUDA provider is given ``use_tf32=0``. TensorRT builds an engine per batch-size profile (1 to
``MAX_BATCH`` windows, cached beside the model in ``.tensorrt-cache/``, since building takes minutes).

None of this could be measured on the CPU-only machine it was written on; ``tests/test_gpu_runtimes.py`` (marked
``gpu``) runs the parity checks where a GPU exists, and ``bench/speed.py --runtimes`` prints their table there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import RuntimeChoiceError
from .parity import compare, parity_inputs

log = logging.getLogger(__name__)

PROVIDERS = {"onnxruntime-cuda": "CUDAExecutionProvider", "onnxruntime-tensorrt": "TensorrtExecutionProvider"}
MAX_BATCH = 64  # windows per call TensorRT's engine profile covers (scoring.WINDOWS_PER_PASS)

Forward = Callable[[Any], tuple[np.ndarray, np.ndarray]]


def exact_float32() -> None:
    """Turn TF32 off for this process (cuDNN and cuBLAS), so float32 on CUDA is float32 (module docstring)."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def gpu_forward(runtime: str, *, model, device: torch.device, precision: str, onnx_path: Path | None,
                torch_forward: Forward, prepare: Callable[[np.ndarray], np.ndarray]) -> Forward:
    """The forward of GPU ``runtime`` (uint8 (B, 3, S, S) -> (scores float32 (B,), maps float32 (B, 1, S, S))),
    once it has matched ``torch_forward`` (eager PyTorch on ``device`` at float32) on the held-out goods.

    Raises:
        RuntimeChoiceError: not on CUDA, not at float32, the provider not available (CPU-only onnxruntime, no
            TensorRT), or the runtime does not match eager PyTorch to the tolerance.
        ModelFileError (from the caller's export lookup): an ONNX runtime and no ONNX export (``onnx_path`` None).
    """
    if device.type != "cuda" or precision != "float32":
        raise RuntimeChoiceError(f"runtime {runtime} runs on CUDA at float32 (asked: {device.type}, {precision}); "
                                 "use --device cuda with precision float32, or --runtime torch")
    exact_float32()
    if runtime == "torch-compile":
        forward = _compiled(model.stpm, device)
    else:
        if onnx_path is None:
            raise RuntimeChoiceError(f"{model.path}: runtime {runtime} scores the ONNX export; run `linewatch export "
                                     f"--model {model.path} --format onnx` first")
        forward = _onnxruntime_gpu(runtime, onnx_path, device, model.image_size)
    inputs, on = parity_inputs(model.metadata, prepare, model.image_size)
    parity = compare(torch_forward(inputs), forward(inputs), on)
    if not parity.passed:
        raise RuntimeChoiceError(f"{model.path}: {runtime} differs from eager PyTorch at float32 on {parity.images} "
                                 f"{on} by {parity.score_rel:.1e} (scores) and {parity.map_rel:.1e} (maps) relative, "
                                 f"more than {parity.tolerance:g}; use --runtime torch")
    log.info("runtime %s matches eager PyTorch on %d %s: scores %.1e, maps %.1e relative", runtime, parity.images, on,
             parity.score_rel, parity.map_rel)
    return forward


def _compiled(stpm: torch.nn.Module, device: torch.device) -> Forward:
    """``torch.compile(stpm, mode="reduce-overhead")``: Inductor's fused kernels replayed as CUDA graphs (one per
    batch size; the first call of each size compiles and records it)."""
    from ..devices import to_model_layout

    compiled = torch.compile(stpm, mode="reduce-overhead", dynamic=False)

    @torch.inference_mode()
    def forward(batch) -> tuple[np.ndarray, ...]:
        x = batch if torch.is_tensor(batch) else torch.from_numpy(np.ascontiguousarray(batch))
        # scores, maps[, global scores]; a CUDA graph's outputs are overwritten by its next replay: copy them out now
        return tuple(o.float().cpu().numpy().copy() for o in compiled(to_model_layout(x, device)))

    return forward


def _onnxruntime_gpu(runtime: str, path: Path, device: torch.device, size: int) -> Forward:
    """An ONNX Runtime session on ``runtime``'s execution provider (CPU provider for what it cannot place)."""
    import onnxruntime as ort

    from .onnx_runtime import INPUT

    wanted = PROVIDERS[runtime]
    if wanted not in ort.get_available_providers():
        raise RuntimeChoiceError(f"runtime {runtime} needs ONNX Runtime's {wanted}, and this onnxruntime has only "
                                 f"{ort.get_available_providers()} (install onnxruntime-gpu in its place)")
    index = device.index or 0
    cuda = ("CUDAExecutionProvider", {"device_id": index, "use_tf32": 0})
    providers: list[Any] = [cuda, "CPUExecutionProvider"]
    if runtime == "onnxruntime-tensorrt":
        shape = f"{INPUT}:{{}}x3x{size}x{size}"
        cache = Path(path).parent / ".tensorrt-cache"
        providers.insert(0, ("TensorrtExecutionProvider", {
            "device_id": index, "trt_fp16_enable": False, "trt_int8_enable": False,
            "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
            "trt_profile_min_shapes": shape.format(1), "trt_profile_opt_shapes": shape.format(16),
            "trt_profile_max_shapes": shape.format(MAX_BATCH)}))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=providers)
    if session.get_providers()[0] != wanted:  # ONNX Runtime falls back to the CPU quietly where a library is missing
        raise RuntimeChoiceError(f"runtime {runtime}: ONNX Runtime could not start {wanted} (it runs "
                                 f"{session.get_providers()}); check the CUDA/TensorRT libraries")

    outputs = [o.name for o in session.get_outputs()]  # scores, maps[, global scores of a model with the branch]

    def forward(batch) -> tuple[np.ndarray, ...]:
        x = np.ascontiguousarray(np.asarray(batch.cpu() if torch.is_tensor(batch) else batch), dtype=np.uint8)
        return tuple(session.run(outputs, {INPUT: x}))

    return forward
