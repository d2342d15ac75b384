"""What several commands share: the ``--device`` option, and the settings with command-line values laid
over them."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from linewatch.contracts.settings import Settings, get_settings

from .errors import fail


class DeviceChoice(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


DeviceOpt = Annotated[DeviceChoice | None, typer.Option("--device", help="[settings: detector.device]")]


class RuntimeChoice(StrEnum):
    auto = "auto"
    torch = "torch"
    onnxruntime = "onnxruntime"
    openvino = "openvino"
    openvino_bf16 = "openvino-bf16"
    openvino_int8 = "openvino-int8"
    torch_compile = "torch-compile"
    onnxruntime_cuda = "onnxruntime-cuda"
    onnxruntime_tensorrt = "onnxruntime-tensorrt"


RuntimeOpt = Annotated[RuntimeChoice | None, typer.Option(
    "--runtime", help="torch, onnxruntime or openvino (both need `linewatch export`) or auto: the fastest "
    "matching eager PyTorch on the model's held-out goods; openvino-bf16 / openvino-int8: opt-in reduced precision "
    "(`linewatch export --format openvino --precision bf16|int8`), with its own recalibrated thresholds; "
    "torch-compile, onnxruntime-cuda, onnxruntime-tensorrt: CUDA at float32 (--device cuda) "
    "[settings: detector.runtime]")]


def device_name(choice: DeviceChoice | None) -> str | None:
    """The ``--device`` value as the settings spell it, or None where it was not given."""
    return choice.value if choice is not None else None


def runtime_name(choice: RuntimeChoice | None, settings: Settings) -> str:
    """The ``--runtime`` value, else ``detector.runtime`` of the settings."""
    return choice.value if choice is not None else settings.detector.runtime


def load_settings() -> Settings:
    """The settings (file, environment, secrets); exits with a clear error where they are invalid."""
    try:
        return get_settings()
    except (ValueError, OSError) as exc:
        fail(f"invalid settings: {exc}")


def with_values(settings: Settings, section: str, **values: object) -> Settings:
    """A copy of ``settings`` with the given (non-None) values set in one section, checked against the
    same limits as the settings themselves (exits with a clear error where a value breaks one)."""
    from pydantic import ValidationError

    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return settings
    current = getattr(settings, section)
    try:
        # from the fields set so far only, so the copy still tells a set value from a default (training.epochs)
        updated = type(current).model_validate({**current.model_dump(include=current.model_fields_set), **values})
    except ValidationError as exc:
        problems = "; ".join(f"--{'-'.join(str(x) for x in e['loc']).replace('_', '-')}: {e['msg']}"
                             for e in exc.errors())
        fail(problems)
    return settings.model_copy(update={section: updated})
