"""A trained model on disk: a directory with the student's weights and a JSON metadata file.

    MODEL_DIR/
      student.safetensors   student feature-pyramid weights (safetensors: tensors only, nothing unpickled)
      model.json            backbone, teacher weights SHA-256, image size, input geometry (``input``,
                            :mod:`.geometry`; absent: resize), normalisation, map smoothing sigma,
                            thresholds, training recipe and history, manifest with content hashes,
                            validation statistics, the good images' frame statistics (the lighting drift
                            reference, :mod:`.frame_stats`; absent in older models), versions;
                            ``exports``: the runtime graphs below
      global.safetensors    optional: the global branch's Gaussian (mean, precision), recorded under ``global``
                            with its name and SHA-256 (:mod:`.global_branch`); ``global-<sha256[:16]>.safetensors``
                            once ``linewatch fit-global`` replaced it; absent in older models, which score as before
      model.onnx            optional: the whole scoring graph for ONNX Runtime (``linewatch export``,
                            :mod:`.runtimes.onnx_export`), recorded under ``exports.onnx`` with its SHA-256
                            and the weights it was exported from
      model.xml, model.bin  optional: the same graph as OpenVINO IR at fp32 (``linewatch export --format openvino``,
                            :mod:`.runtimes.openvino_export`), under ``exports.openvino``
      model-bf16.xml/.bin,  optional: the IR for OpenVINO at bf16 and at int8 (NNCF), opt-in, each with thresholds
      model-int8.xml/.bin   recalibrated on that precision, under ``exports.openvino-bf16`` / ``exports.openvino-int8``

The teacher is not stored: it is rebuilt from the local ImageNet weights file, whose SHA-256 must
match the one recorded at training time.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from linewatch.contracts.files import sha256_file

from .backbones import backbone_spec, build_student, build_teacher
from .geometry import InputGeometry
from .global_branch import (
    GLOBAL_FIELD,
    GLOBAL_FILE,
    GlobalBranchError,
    is_branch_file,
    load_branch,
    pooled_dim,
    recorded_file,
    save_branch,
)
from .stpm import STPM

FORMAT = "linewatch-stpm/1"
WEIGHTS_FILE = "student.safetensors"
METADATA_FILE = "model.json"
ONNX_FILE = "model.onnx"
# OpenVINO IR per precision: (graph, weights). The export key in model.json is the runtime that scores with it.
OPENVINO_FILES = {"fp32": ("model.xml", "model.bin"), "bf16": ("model-bf16.xml", "model-bf16.bin"),
                  "int8": ("model-int8.xml", "model-int8.bin")}
OPENVINO_EXPORTS = {"fp32": "openvino", "bf16": "openvino-bf16", "int8": "openvino-int8"}
MODEL_FILES = frozenset({WEIGHTS_FILE, METADATA_FILE, ONNX_FILE, GLOBAL_FILE,
                         *(name for pair in OPENVINO_FILES.values() for name in pair)})
EXPORTS_FIELD = "exports"  # model.json: {format: record}, see export_path
# Fields every model.json has; read_metadata refuses a model without one of them.
REQUIRED_FIELDS = ("backbone", "teacher_weights", "image_size", "thresholds", "weights_sha256", "map_smoothing_sigma")


class ModelFileError(ValueError):
    """A model directory that is missing, incomplete or inconsistent; the message says what is wrong."""


@dataclass
class LoadedModel:
    """An STPM model ready to score, with its metadata (``model.json``) and its directory.

    ``thresholds``: ``image`` and ``pixel`` (anomaly-map units), the rates they were calibrated for, and
    on what.
    """

    stpm: STPM
    metadata: dict[str, Any]
    path: Path

    @property
    def version(self) -> str:
        """The registry's model version, else ``sha-<first 12 hex of the weights' SHA-256>``."""
        return str(self.metadata.get("version") or f"sha-{self.metadata['weights_sha256'][:12]}")

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    @property
    def thresholds(self) -> dict[str, float]:
        return self.metadata["thresholds"]


def _umask() -> int:
    """The process umask, read without changing it (os.umask would, for a moment, in every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def check_output_dir(out_dir: Path) -> Path:
    """Check that a model may be written to ``out_dir``: it does not exist, is an empty directory, or
    holds only a previous model's files (which the new model replaces). Returns the resolved path.

    Raises:
        ModelFileError: ``out_dir`` is a file, or a directory with anything else in it (a data folder,
            say), which replacing would delete.
    """
    out_dir = Path(out_dir).resolve()
    if not out_dir.exists():
        return out_dir
    if not out_dir.is_dir():
        raise ModelFileError(f"{out_dir}: exists and is not a directory; choose another --out")
    others = sorted(p.name for p in out_dir.iterdir() if p.name not in MODEL_FILES and not is_branch_file(p.name))
    if others:
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise ModelFileError(f"{out_dir}: not empty and not a model directory ({shown}); a model replaces its "
                             "directory, so choose a new or empty one")
    return out_dir


def save_model(out_dir: Path, student_state: dict[str, torch.Tensor], metadata: dict[str, Any],
               global_gaussian: tuple[Any, Any] | None = None) -> Path:
    """Write a model directory atomically (a temporary sibling renamed into place).

    ``metadata`` gets ``format`` and ``weights_sha256`` added. ``global_gaussian`` (mean, precision) is written to
    ``global.safetensors`` and its SHA-256 to ``metadata["global"]["sha256"]`` (which must then exist). A previous
    model at ``out_dir`` is replaced.

    Raises:
        ModelFileError: see :func:`check_output_dir`; nothing that is not a model is ever deleted.
    """
    out_dir = check_output_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        # mkdtemp makes the directory private; a model is meant to be shared (workers may run as another user).
        umask = _umask()
        tmp.chmod(0o777 & ~umask)
        weights = tmp / WEIGHTS_FILE
        save_file({k: v.detach().contiguous().cpu() for k, v in student_state.items()}, str(weights))
        meta = {"format": FORMAT, **metadata, "weights_sha256": sha256_file(weights)}
        written = [weights, tmp / METADATA_FILE]
        if global_gaussian is not None:
            meta[GLOBAL_FIELD] = {**meta[GLOBAL_FIELD], "sha256": save_branch(tmp / GLOBAL_FILE, *global_gaussian)}
            written.append(tmp / GLOBAL_FILE)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str))
        for f in written:
            f.chmod(0o666 & ~umask)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def read_metadata(model_dir: Path) -> dict[str, Any]:
    """Parse and check ``model.json``.

    Raises:
        ModelFileError: missing directory or file, unknown format, required fields absent, or an invalid
            ``input`` geometry.
    """
    model_dir = Path(model_dir)
    meta_path = model_dir / METADATA_FILE
    if not meta_path.is_file():
        raise ModelFileError(f"{model_dir}: not a linewatch model directory ({METADATA_FILE} missing)")
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError as exc:
        raise ModelFileError(f"{meta_path}: invalid JSON ({exc})") from None
    if meta.get("format") != FORMAT:
        raise ModelFileError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise ModelFileError(f"{meta_path}: missing fields {missing}")
    try:
        InputGeometry.from_metadata(meta)
    except ValueError as exc:
        raise ModelFileError(f"{meta_path}: {exc}") from None
    return meta


def epochs_trained(meta: dict[str, Any]) -> int:
    """The epochs a model trained, from its ``model.json`` (``meta``, as :func:`read_metadata` returns it): the step
    budget's (``training.few_shot.epoch_budget.epochs``, :mod:`.recipe`), else, for a model written before the
    budget was recorded, the epochs asked (``training.epochs``)."""
    training = meta["training"]
    return training.get("few_shot", {}).get("epoch_budget", {}).get("epochs", training["epochs"])


def write_metadata(model_dir: Path, meta: dict[str, Any]) -> None:
    """Replace ``model.json`` of an existing model directory with ``meta`` (written beside it, then renamed, so
    a reader never sees half a file). The weights are not touched: ``weights_sha256`` must stay theirs.

    Raises:
        ModelFileError: ``meta`` lacks a required field (see :func:`read_metadata`).
        OSError: the directory cannot be written.
    """
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise ModelFileError(f"{model_dir}: metadata without fields {missing}")
    target = Path(model_dir) / METADATA_FILE
    tmp = target.with_name(f".{METADATA_FILE}.tmp")
    tmp.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp, target)


def load_model(model_dir: Path, device: torch.device | str = "cpu", teacher_weights: Path | None = None) -> LoadedModel:
    """Load a model directory onto ``device`` in eval mode.

    Checks that the weights file is the one the metadata describes (SHA-256) and that the local
    teacher weights are those the student was trained against; so is the global branch's file, where the model
    has one (:mod:`.global_branch`).

    Raises:
        ModelFileError: inconsistent or corrupt model files (the global branch's too), or a different teacher.
        WeightsNotFoundError: the teacher weights file is absent.
        ValueError: the teacher weights do not fit the backbone.
    """
    model_dir = Path(model_dir)
    meta = read_metadata(model_dir)
    try:
        branch = load_branch(model_dir, meta)
    except GlobalBranchError as exc:
        # linewatch fit-global may have committed a new model.json and removed the branch file the one read named
        # in between: read again (no loop: a second fit-global in that moment is an error worth seeing).
        again = read_metadata(model_dir)
        if again.get(GLOBAL_FIELD) == meta.get(GLOBAL_FIELD):
            raise ModelFileError(str(exc)) from None
        meta = again
        try:
            branch = load_branch(model_dir, meta)
        except GlobalBranchError as exc2:
            raise ModelFileError(str(exc2)) from None
    weights = model_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelFileError(f"{model_dir}: {WEIGHTS_FILE} missing")
    if sha256_file(weights) != meta["weights_sha256"]:
        raise ModelFileError(f"{weights}: content does not match the SHA-256 recorded in {METADATA_FILE}")
    name = meta["backbone"]
    teacher, teacher_path = build_teacher(name, teacher_weights)
    expected = meta["teacher_weights"]["sha256"]
    actual = sha256_file(teacher_path)
    if actual != expected:
        raise ModelFileError(
            f"{model_dir} was trained against teacher weights with SHA-256 {expected[:16]}..., "
            f"but {teacher_path} has {actual[:16]}...: use the same teacher weights file"
        )
    student = build_student(name)
    try:
        student.load_state_dict(load_file(str(weights)), strict=True)
    except (RuntimeError, OSError) as exc:
        raise ModelFileError(f"{weights}: does not fit a {name} student ({exc})") from None
    expected_dim = None if branch is None else pooled_dim(teacher.channels, branch.pooling)
    if branch is not None and branch.dim != expected_dim:
        raise ModelFileError(f"{model_dir}: the global branch has {branch.dim} dimensions; a {name} teacher's "
                             f"features pooled by {branch.pooling!r} have {expected_dim}")
    stpm = STPM(backbone_spec(name), teacher, student, float(meta["map_smoothing_sigma"]), branch)
    return LoadedModel(stpm=stpm.to(device).eval(), metadata=meta, path=model_dir)


def export_path(model_dir: Path, meta: dict[str, Any], fmt: str) -> Path | None:
    """The checked file of the ``fmt`` export (``onnx``, ``openvino``, ``openvino-bf16``, ``openvino-int8``)
    recorded in ``meta["exports"]``, None when there is none.

    A record is ``{"file", "sha256", "weights_sha256", ...}`` (:mod:`.runtimes.onnx_export`,
    :mod:`.runtimes.openvino_export` write them), with ``data_file`` and ``data_sha256`` where the graph keeps its
    weights in a second file (OpenVINO's ``.bin``). Every file must hold the SHA-256 recorded and have been exported
    from the weights and the global branch (``global_sha256``, absent on both sides without one) this ``model.json``
    describes, so an export never scores with other weights or another branch than the model's.

    Raises:
        ModelFileError: a recorded file is missing, its content differs, or it was exported from other weights or
            another global branch.
    """
    record = meta.get(EXPORTS_FIELD, {}).get(fmt)
    if not record:
        return None
    path = Path(model_dir) / record["file"]
    if record.get("weights_sha256") != meta["weights_sha256"]:
        raise ModelFileError(f"{path}: exported from other weights than {WEIGHTS_FILE}; export the model again")
    if record.get("global_sha256") != (meta.get(GLOBAL_FIELD) or {}).get("sha256"):
        raise ModelFileError(f"{path}: exported with another global branch than {recorded_file(meta) or 'none'}; "
                             "export the model again")
    files = [(record["file"], record["sha256"])]
    if record.get("data_file"):
        files.append((record["data_file"], record.get("data_sha256")))
    for name, digest in files:
        file = Path(model_dir) / name
        if not file.is_file():
            raise ModelFileError(f"{model_dir}: {name} recorded in {METADATA_FILE} is missing")
        if sha256_file(file) != digest:
            raise ModelFileError(f"{file}: content does not match the SHA-256 recorded in {METADATA_FILE}")
    return path


def export_paths(model_dir: Path, meta: dict[str, Any]) -> dict[str, Path]:
    """:func:`export_path` of every export recorded in ``meta`` (the registry checks them all before it ships a
    version). Raises: ModelFileError, see there."""
    return {fmt: path for fmt in meta.get(EXPORTS_FIELD, {}) if (path := export_path(model_dir, meta, fmt))}
