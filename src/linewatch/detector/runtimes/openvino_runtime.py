"""Scoring with OpenVINO on the CPU, from the model's OpenVINO IR (``model.xml``, :mod:`.openvino_export`) where it
has one, else from its ONNX export (``model.onnx``, which OpenVINO reads natively and compiles at load).

Compiled at ``precision`` (``INFERENCE_PRECISION_HINT``): f32 by default, since OpenVINO's CPU default is bf16 on
processors that have it, which would not match eager PyTorch to :data:`.parity.PARITY_TOLERANCE`; bf16 only for
the opt-in ``openvino-bf16`` export, whose thresholds were recalibrated at the precision that executed. A processor
without bf16 instructions (no AVX512_BF16 or AMX) runs such a model at f32: :attr:`OpenVinoForward.executes` says
what the plugin chose. An int8 IR (NNCF) runs its quantised convolutions in int8 whatever the hint, the rest at it.
Threads: ``threads`` inference threads (:mod:`.threads`) and the latency hint (one request at a time: a worker
scores one batch after the other).

The CPU plugin prepares every input shape it has not run yet on that shape's first call (it grows its memory for a
larger batch, and sets up each new shape), which then costs 1.5-3.5x a later one: on the bottle model at 2 threads,
batch 1 62 vs 18 ms, batch 16 446 vs 306 ms; once the largest has run, a smaller size's first call costs 10-25 ms
more (bench/README.md, "Latency"). A worker calls :meth:`OpenVinoForward.warm_up` when it loads a model, so that
frames do not pay it.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # export precision -> INFERENCE_PRECISION_HINT
# Sizes warmed one by one (the rest pay 10-25 ms on their first call): the time grows with the square of the size
# (16: about 4 s on 2 threads), and a line at camera rate mostly sees small batches.
WARM_EACH_SIZE_UP_TO = 16


def warm_up_sizes(max_batch: int) -> list[int]:
    """The batch sizes :meth:`OpenVinoForward.warm_up` runs, in order: ``max_batch`` (at least 1), then each size from
    ``min(max_batch - 1, WARM_EACH_SIZE_UP_TO)`` down to 1."""
    largest = max(1, int(max_batch))
    return [largest, *range(min(largest - 1, WARM_EACH_SIZE_UP_TO), 0, -1)]


class OpenVinoForward:
    """An OpenVINO CPU model compiled from an IR (``.xml``) or an ONNX export; call it with uint8 (B, 3, S, S).

    Args:
        path: the ``model.xml`` or ``model.onnx`` file (its checksums already checked,
            :func:`..model_files.export_path`).
        threads: inference threads, at least 1.
        precision: ``fp32``, ``bf16`` or ``int8`` (the export's precision; ``HINTS`` maps it to the plugin's hint).
    Raises (constructor):
        ImportError: openvino is not installed. KeyError: unknown precision. OpenVINO's errors (a file it cannot
        read or compile).
    """

    name = "openvino"

    def __init__(self, path: Path, threads: int, precision: str = "fp32"):
        import openvino as ov

        core = ov.Core()
        self.threads = max(1, int(threads))
        self.model = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_PRECISION_HINT": HINTS[precision], "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY"})
        # what the plugin runs the floating-point operations at: f32 where bf16 was asked on a CPU without it
        self.executes = self.model.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "f32", "bf16"
        self._request = self.model.create_infer_request()
        self._lock = threading.Lock()  # one infer request: calls from two threads take turns

    def warm_up(self, max_batch: int, image_size: int) -> list[int]:
        """Run the batch sizes of :func:`warm_up_sizes` once each, on zeros (uint8 (b, 3, image_size, image_size)):
        the largest first, so that the plugin grows its memory once; returns the sizes run, in order. About 4 s for 16
        on 2 threads (the bottle model at 256 px); the memory stays sized for ``max_batch``. Raises: as
        :meth:`__call__`."""
        sizes = warm_up_sizes(max_batch)
        zeros = np.zeros((sizes[0], 3, image_size, image_size), dtype=np.uint8)
        for b in sizes:
            self(zeros[:b])
        return sizes

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """uint8 (B, 3, S, S) -> (image scores float32 (B,), anomaly maps float32 (B, 1, S, S)[, global scores
        float32 (B,) of a model with a global branch]), in the graph's output order."""
        with self._lock:
            result = self._request.infer({0: np.ascontiguousarray(np.asarray(batch), dtype=np.uint8)})
            # the request's output tensors are reused by its next inference: copy them out
            return tuple(np.array(result[out], dtype=np.float32, copy=True) for out in self.model.outputs)
