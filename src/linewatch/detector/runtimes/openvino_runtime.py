"""Scoring with OpenVINO on the CPU, from the same checked ONNX export as ONNX Runtime (``model.onnx``, which
OpenVINO reads natively and compiles at load: one exported file, one checksum, one parity record).

Compiled at float32 (``INFERENCE_PRECISION_HINT`` f32: OpenVINO's CPU default is bf16 on processors that have it,
which would not match eager PyTorch to :data:`.parity.PARITY_TOLERANCE`), with ``threads`` inference threads
(:mod:`.threads`) and the latency hint (one request at a time: a worker scores one batch after the other).
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np


class OpenVinoForward:
    """An OpenVINO CPU model compiled from an exported ``model.onnx``; call it with uint8 (B, 3, S, S) inputs.

    Args:
        path: the ``model.onnx`` file (its checksum already checked, :func:`..model_files.export_path`).
        threads: inference threads, at least 1.
    Raises (constructor):
        ImportError: openvino is not installed. OpenVINO's errors (a file it cannot read or compile).
    """

    name = "openvino"

    def __init__(self, path: Path, threads: int):
        import openvino as ov

        core = ov.Core()
        self.threads = max(1, int(threads))
        self.model = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY"})
        self._request = self.model.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from two threads take turns

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """uint8 (B, 3, S, S) -> (image scores float32 (B,), anomaly maps float32 (B, 1, S, S)[, global scores
        float32 (B,) of a model with a global branch]), in the graph's output order."""
        with self._lock:
            result = self._request.infer({0: np.ascontiguousarray(np.asarray(batch), dtype=np.uint8)})
            # the request's output tensors are reused by its next inference: copy them out
            return tuple(np.array(result[out], dtype=np.float32, copy=True) for out in self.model.outputs)
