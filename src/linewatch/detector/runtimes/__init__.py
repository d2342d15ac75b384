"""Inference runtimes for the STPM scoring graph: eager PyTorch (:mod:`linewatch.detector.scoring`), and ONNX
Runtime (:mod:`.onnx_runtime`) and OpenVINO (:mod:`.openvino_runtime`) on the graph :mod:`.onnx_export` writes;
the parity check that decides whether a runtime may score (:mod:`.parity`), the choice among them
(:mod:`.selection`) and the thread count every runtime and the trainer use (:mod:`.threads`).

Preprocessing (decoding, preparing the model input windows under the model's geometry, stitching their maps)
stays outside every runtime: all of them take the same uint8 (B, 3, S, S) windows that
:meth:`linewatch.detector.scoring.Scorer.prepare` makes (its ``tiles``; ``Scorer.windows``).
"""

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")


class RuntimeChoiceError(ValueError):
    """A runtime that cannot score as asked (unknown, or an export's runtime on a GPU or at reduced precision)."""
