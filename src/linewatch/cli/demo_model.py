"""The models ``linewatch up`` runs with when none is given: a demonstration model per product, trained once on a
shared data set's good training images and cached in the state folder."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from pathlib import Path

from linewatch.contracts.products import DEFAULT_PRODUCT
from linewatch.contracts.settings import Settings

DEFAULT_MODEL_NAME = "bottle-default"


@dataclass(frozen=True)
class DemoProduct:
    """A product ``linewatch up --products`` can run: where its data set lies under ``data_root``, the folder its
    camera replays, and which files of it are frames (``glob``; the Magnetic Tile folders hold masks beside them)."""

    data: str
    replay: str
    glob: str | None = None


DEMO_PRODUCTS = {
    "bottle": DemoProduct("mvtec_ad/bottle", "mvtec_ad/bottle/test"),
    "magnetic_tile": DemoProduct("magnetic_tile", "magnetic_tile", "*.jpg"),
}


def default_model_dir(settings: Settings, product: str = DEFAULT_PRODUCT) -> Path:
    """Where the demo model of ``product`` is cached (the default product's is the bottle model)."""
    name = DEFAULT_MODEL_NAME if product in (DEFAULT_PRODUCT, "bottle") else f"{product}-default"
    return settings.state_dir / "models" / name


def ensure_default_model(settings: Settings, epochs: int | None = None, stop: threading.Event | None = None,
                         product: str = DEFAULT_PRODUCT) -> Path:
    """The cached demo model of ``product`` (the default product's: bottle), trained on the good training images of
    its data set (:data:`DEMO_PRODUCTS`) under ``data_root`` the first time.

    Raises:
        DatasetError: the images are not where ``data_root`` says.
        TrainingStopped: ``stop`` was set (Ctrl-C, SIGTERM) during the training; nothing is cached.
    """
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.model_files import ModelFileError, read_metadata
    from linewatch.detector.recipe import describe_budget
    from linewatch.detector.training import TrainConfig, train

    out = default_model_dir(settings, product)
    with contextlib.suppress(ModelFileError):
        read_metadata(out)
        return out
    data = settings.data_root / DEMO_PRODUCTS["bottle" if product == DEFAULT_PRODUCT else product].data
    dataset = open_dataset(data)
    # A demonstration: 209 images cannot back a 1% false-reject target; published marked under-calibrated.
    config = TrainConfig.from_settings(settings, allow_under_calibrated=True, **({"epochs": epochs} if epochs else {}))
    named = "" if product == DEFAULT_PRODUCT else f" of {product}"
    print(f"No model given: training the default model{named} on {data} ({len(dataset.train)} good images, "
          f"{describe_budget(config.epochs, config.min_steps)}, "
          f"published even if under-calibrated); it is cached in {out}", flush=True)
    train(dataset.train, out, config, stop=stop)
    if settings.trainer.export_onnx:
        from linewatch.detector.runtimes.onnx_export import export_or_warn

        export_or_warn(out, settings.backbone.weights)
    return out
