"""GPU runtimes (issue 17): ``torch-compile`` (CUDA graphs), ONNX Runtime's CUDA and TensorRT providers, each held
to eager PyTorch at float32 (<= 1e-5 relative on scores and maps) on real images. The parity tests need CUDA and are
marked ``gpu`` (skipped without one, saying so); the refusals run everywhere."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from linewatch.detector.imaging import read_image
from linewatch.detector.runtimes import GPU_RUNTIMES, RuntimeChoiceError
from linewatch.detector.runtimes.parity import compare, held_out_inputs
from linewatch.detector.scoring import Scorer

from datasets import bottle

NO_CUDA = "no CUDA GPU on this machine: the GPU runtimes' parity with eager PyTorch is checked where one exists"


@pytest.mark.parametrize("runtime", GPU_RUNTIMES)
def test_gpu_runtimes_are_refused_off_cuda_and_below_float32(quick_model, runtime):
    with pytest.raises(RuntimeChoiceError, match="runs on CUDA at float32"):
        Scorer(quick_model.model_dir, "cpu", runtime=runtime)


@pytest.fixture(scope="module")
def exported_for_gpu(quick_model, tmp_path_factory):
    if not torch.cuda.is_available():
        pytest.skip(NO_CUDA)
    from linewatch.detector.runtimes.onnx_export import export_onnx

    model_dir = tmp_path_factory.mktemp("gpu") / "bottle-quick"
    shutil.copytree(quick_model.model_dir, model_dir)
    export_onnx(model_dir)
    return model_dir


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("runtime", GPU_RUNTIMES)
def test_gpu_runtimes_match_eager_pytorch_at_float32(exported_for_gpu, runtime):
    import onnxruntime as ort

    from linewatch.detector.runtimes.gpu import PROVIDERS

    if runtime in PROVIDERS and PROVIDERS[runtime] not in ort.get_available_providers():
        pytest.skip(f"{runtime}: this onnxruntime has no {PROVIDERS[runtime]} (install onnxruntime-gpu)")
    eager = Scorer(exported_for_gpu, "cuda", precision="float32", runtime="torch")
    gpu = Scorer(exported_for_gpu, "cuda", precision="float32", runtime=runtime)  # its parity is checked at load
    assert gpu.runtime == runtime
    goods = held_out_inputs(gpu.model.metadata, gpu.windows, limit=64)
    defects = [read_image(p) for p in sorted((bottle() / "test" / "broken_large").glob("*.png"))[:3]]
    images = np.concatenate([goods, *[gpu.windows(d) for d in defects]])
    for batch in (images[:1], images, images[:4], images):  # each batch size its own graph / profile
        expected, got = eager.score(batch), gpu.score(batch)
        parity = compare((expected.image_scores, expected.anomaly_maps), (got.image_scores, got.anomaly_maps), "")
        assert parity.score_rel <= 1e-5 and parity.map_rel <= 1e-5, parity
        assert np.array_equal(expected.is_defect, got.is_defect)
    cpu = Scorer(exported_for_gpu, "cpu", runtime="torch").score(images)
    assert np.allclose(gpu.score(images).image_scores, cpu.image_scores, rtol=1e-5, atol=0)
