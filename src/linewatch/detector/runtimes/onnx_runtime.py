"""Scoring with ONNX Runtime on the CPU, from the graph :mod:`.onnx_export` wrote (``model.onnx``).

The graph is the whole of :meth:`linewatch.detector.stpm.STPM.forward`: uint8 (B, 3, S, S) model inputs in,
image scores float32 (B,) and smoothed anomaly maps float32 (B, 1, S, S) out, at float32; a model with a global
branch (:mod:`linewatch.detector.global_branch`) has fused image scores and a third output, its Mahalanobis
distances float32 (B,).

The session runs ``threads`` intra-op threads (:mod:`.threads` decides how many) and one inter-op thread, and its
threads do not spin-wait between operators: spinning keeps a core busy for a while after each operator, which a
worker's decode and store threads, other workers and other containers on the host need.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

INPUT = "images"
OUTPUTS = ("image_scores", "anomaly_maps")
GLOBAL_OUTPUT = "global_scores"  # the third output of a model with a global branch


class OnnxRuntimeForward:
    """An ONNX Runtime session of one exported model; call it with uint8 (B, 3, S, S) model inputs.

    Args:
        path: the ``model.onnx`` file (its checksum already checked, :func:`..model_files.export_path`).
        threads: intra-op threads, at least 1.
    Raises (constructor):
        ImportError: onnxruntime is not installed. onnxruntime's errors (a file it cannot load).
    """

    name = "onnxruntime"

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, int(threads))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: its warnings about unused initialisers are noise here
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        """uint8 (B, 3, S, S) -> (image scores float32 (B,), anomaly maps float32 (B, 1, S, S)[, global scores
        float32 (B,)])."""
        return tuple(self.session.run(self.outputs, {INPUT: np.ascontiguousarray(batch, dtype=np.uint8)}))
