"""Inference runtimes for the STPM scoring graph: eager PyTorch (:mod:`linewatch.detector.scoring`), and ONNX
Runtime (:mod:`.onnx_runtime`) and OpenVINO (:mod:`.openvino_runtime`) on the graphs :mod:`.onnx_export` and
:mod:`.openvino_export` write (OpenVINO also at bf16 and int8, :mod:`.reduced_precision`); on CUDA,
``torch.compile`` and ONNX Runtime's CUDA and TensorRT providers (:mod:`.gpu`); the parity check that decides
whether a runtime may score (:mod:`.parity`), the choice among them (:mod:`.selection`) and the thread count
every runtime and the trainer use (:mod:`.threads`).

Preprocessing (decoding, preparing the model input windows under the model's geometry, stitching their maps)
stays outside every runtime: all of them take the same uint8 (B, 3, S, S) windows that
:meth:`linewatch.detector.scoring.Scorer.prepare` makes (its ``tiles``; ``Scorer.windows``).
"""

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino", "openvino-bf16", "openvino-int8",
            "torch-compile", "onnxruntime-cuda", "onnxruntime-tensorrt")  # the last three: CUDA only, :mod:`.gpu`
GPU_RUNTIMES = ("torch-compile", "onnxruntime-cuda", "onnxruntime-tensorrt")
REDUCED_PRECISION = {"openvino-bf16": "bf16", "openvino-int8": "int8"}  # opt-in runtimes: never chosen by auto


class RuntimeChoiceError(ValueError):
    """A runtime that cannot score as asked (unknown, or an export's runtime on a GPU or at reduced precision)."""
