"""The model ``linewatch up`` runs with when none is given: a demonstration model trained once on the MVTec AD
bottle training images and cached in the state folder."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from linewatch.contracts.settings import Settings

DEFAULT_MODEL_NAME = "bottle-default"


def default_model_dir(settings: Settings) -> Path:
    return settings.state_dir / "models" / DEFAULT_MODEL_NAME


def ensure_default_model(settings: Settings, epochs: int | None = None, stop: threading.Event | None = None
                         ) -> Path:
    """The cached default model, trained on ``<data_root>/mvtec_ad/bottle`` train/good the first time.

    Raises:
        DatasetError: the bottle images are not where ``data_root`` says.
        TrainingStopped: ``stop`` was set (Ctrl-C, SIGTERM) during the training; nothing is cached.
    """
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.model_files import ModelFileError, read_metadata
    from linewatch.detector.training import TrainConfig, train

    out = default_model_dir(settings)
    with contextlib.suppress(ModelFileError):
        read_metadata(out)
        return out
    data = settings.data_root / "mvtec_ad" / "bottle"
    dataset = open_dataset(data)
    # A demonstration: 209 images cannot back a 1% false-reject target; published marked under-calibrated.
    config = TrainConfig.from_settings(settings, allow_under_calibrated=True, **({"epochs": epochs} if epochs else {}))
    print(f"No model given: training the default model on {data}/train/good ({len(dataset.train)} images, "
          f"{config.epochs} epochs, published even if under-calibrated); it is cached in {out}", flush=True)
    train(dataset.train, out, config, stop=stop)
    if settings.trainer.export_onnx:
        from linewatch.detector.runtimes.onnx_export import export_or_warn

        export_or_warn(out, settings.backbone.weights)
    return out
