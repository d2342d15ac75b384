"""The ``[trainer]`` section of the settings (:mod:`.settings` assembles it with the others): the retraining
service's triggers and recipe, the guards against label noise, and the limits of the promotion rule."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from .products import DEFAULT_PRODUCT

PRODUCT_PLACEHOLDER = "{product}"  # in base_data / defect_reference: the product whose job reads the folder


def product_path(path: Path | None, product: str) -> Path | None:
    """The folder a setting names for ``product``'s training jobs: ``path`` with every ``{product}`` replaced by
    the product's name (``/data/{product}/good`` -> ``/data/bottle/good``); a path without the placeholder is the
    default product's only (None for any other product), since one product's images are no evidence for another's.
    None stays None."""
    if path is None:
        return None
    if PRODUCT_PLACEHOLDER in str(path):
        return Path(str(path).replace(PRODUCT_PLACEHOLDER, product))
    return path if product == DEFAULT_PRODUCT else None


class TrainerSettings(BaseModel):
    """The retraining service.

    Label-noise guards (``linewatch.contracts.labels``, ``linewatch.trainer.near_copies``): a frame scored more
    than ``second_opinion_above`` x threshold needs "good" from two different operators before it can train a
    model; near-copies are collapsed and near-identical scenes capped per camera and time window. Frame
    distance = mean absolute difference of 32x32 RGB thumbnails standardised to mean 0, standard deviation 1
    (see near_copies.py for the measured distances, and why not a perceptual hash).
    """

    min_new_good: int = Field(50, ge=1, description="confirmed-good frames that trigger a retraining")
    schedule_hours: float | None = Field(None, gt=0, description="also retrain this often, hours; none = off")
    poll_s: float = Field(10.0, gt=0, description="how often the trainer checks its triggers, seconds")
    fine_tune_epochs: int = Field(8, ge=1)
    fine_tune_lr: float = Field(0.1, gt=0, description="SGD learning rate when fine-tuning the active student")
    auto_promote: bool = Field(True, description="activate a candidate that passes the promotion rule")
    export_onnx: bool = Field(True, description="export each new version's scoring graph to ONNX before it is "
                              "registered, so workers on runtime auto can score with ONNX Runtime")
    export_openvino: list[Literal["fp32", "bf16", "int8"]] = Field(
        [], description="also export each new version to OpenVINO IR at these precisions before it is registered "
        "(bf16/int8 with thresholds recalibrated on them), so workers on runtime openvino-bf16 / openvino-int8 can "
        "load every new version; [] = none")
    base_data: Path | None = Field(None, description="good images the first model was trained on; '{product}' in "
                                   "the path stands for the job's product; a path without it serves the product "
                                   "default only (product_path)")
    metrics_port: int | None = None
    second_opinion_above: float | None = Field(
        2.0, gt=1, description="normalised score (x threshold) above which a good label needs a second, different "
        "operator before the frame can train a model; none = off")
    near_copy_distance: float | None = Field(
        0.01, ge=0, description="confirmed goods of one camera closer than this are copies of one frame (JPEG "
        "re-encodes, 1-px shifts): one is kept; none = off")
    scene_distance: float = Field(0.024, ge=0, description="frames closer than this show the same scene (a stalled "
                                  "conveyor); see scene_cap")
    scene_cap: int | None = Field(3, ge=1, description="most frames of one scene kept per camera and "
                                  "scene_window_s; none = off")
    scene_window_s: float = Field(600.0, gt=0, description="time window of scene_cap, seconds of capture time")
    review_share: float = Field(0.2, ge=0, lt=1, description="share of confirmed goods (chosen by content hash, so "
                                "stable) never trained on: the promotion review's false-reject evidence")
    defect_reference: Path | None = Field(None, description="folder of known defect images of this line's product "
                                          "(searched recursively): the promotion review's miss evidence, "
                                          "with the operator-confirmed defects; '{product}' in the path stands for "
                                          "the job's product; a path without it serves the product default only")
    max_threshold_change: float = Field(1.5, gt=1, description="a candidate whose image threshold moved by more "
                                        "than this factor (up or down) is never activated automatically")
    announce_attempts: int = Field(3, ge=1, description="tries at announcing a newly activated version on the "
                                   "models topic; when all fail, the activation is rolled back in SQL, so the "
                                   "registry never names a version the workers were not told about")
    announce_backoff_s: float = Field(2.0, ge=0, description="wait before the second announcing try, seconds; "
                                      "doubled before each further one")
    announce_timeout_s: float = Field(20.0, gt=0, description="longest one announcing try waits for the broker, once "
                                      "for the topic's metadata and once for its acknowledgement, seconds")
