"""The retraining set of one product: the base good images plus the operator-confirmed good frames of that
product's inspections (``inspections.product``), de-duplicated by content hash, never including a frame labelled
defect (nor any image with the same bytes as one, whatever product that frame was inspected as).

Guards against label noise (``trainer.*`` settings): only confirmed goods count (``contracts.labels``: a frame
scored far above the threshold needs two operators); a kept image that is missing or cannot be decoded is left
out, not allowed to fail the job; near-copies and stalled scenes are thinned out (:mod:`.near_copies`); and a
stable share of the confirmed goods, chosen by content hash, is held out of training as the promotion review's
false-reject evidence. Everything left out is recorded, with why, for the model's manifest
(:meth:`TrainingSet.manifest_entries`: role ``dropped`` or ``held_out``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine

from linewatch.contracts.files import path_of, sha256_file
from linewatch.contracts.labels import awaiting_second_opinion, confirmed_good_frames, effective_labels
from linewatch.contracts.products import DEFAULT_PRODUCT
from linewatch.contracts.schema import Inspection, ModelVersion
from linewatch.contracts.trainer_settings import TrainerSettings
from linewatch.detector.imaging import ImageError, read_image
from linewatch.detector.model_files import read_metadata, write_metadata

from .near_copies import Candidate, thin_out, thumbnail

log = logging.getLogger(__name__)

TRAINED_ROLES = ("train", "val")  # manifest roles of images a model learnt from or was calibrated on


@dataclass
class TrainingSet:
    """Image files to train on, where each came from, and what was left out and why."""

    paths: list[Path] = field(default_factory=list)
    base: int = 0
    confirmed: int = 0
    duplicates: int = 0
    excluded_defect: int = 0
    missing: list[str] = field(default_factory=list)
    # {"path", "sha256", "role": "dropped", "kind", "reason", "source"} (see summary())
    dropped: list[dict] = field(default_factory=list)
    held_out: list[dict] = field(default_factory=list)  # {"path", "sha256", "role": "held_out", "reason"}
    confirmed_found: int = 0  # frames confirmed good in the record (second opinion given where needed)
    awaiting: int = 0  # frames labelled good that still wait for a second operator

    def manifest_entries(self) -> list[dict]:
        """The frames left out, for ``model.json``'s manifest beside the ``train``/``val`` entries."""
        return self.dropped + self.held_out

    def summary(self) -> dict:
        """What the job trains on, for its record (``training_jobs.training_set``) and the Models page:
        ``{"base": int, "confirmed_found": int, "awaiting_second_opinion": int, "used": int, "held_out": int,
        "dropped": [{"file", "path", "source", "kind", "reason"}], "dropped_by_kind": {kind: int}}``. ``source``:
        ``confirmed`` (a confirmed good), ``awaiting`` (a good waiting for a second operator) or ``base`` (a base
        image with the same bytes as a frame labelled defect); ``used`` + ``held_out`` + the ``confirmed`` drops =
        ``confirmed_found``. Kinds: see :data:`DROP_KINDS`."""
        by_kind: dict[str, int] = {}
        for d in self.dropped:
            by_kind[d["kind"]] = by_kind.get(d["kind"], 0) + 1
        return {"base": self.base, "confirmed_found": self.confirmed_found, "awaiting_second_opinion": self.awaiting,
                "used": self.confirmed, "held_out": len(self.held_out),
                "dropped": [{"file": Path(d["path"]).name, "path": d["path"], "source": d["source"], "kind": d["kind"],
                             "reason": d["reason"]} for d in self.dropped],
                "dropped_by_kind": by_kind}


# Why a confirmed good is left out of training (the ``kind`` of a dropped entry; ``reason`` says it in words).
DROP_KINDS = {
    "missing": "the kept image is gone or cannot be read",
    "unreadable": "the kept image cannot be decoded",
    "labelled_defect": "the same bytes as a frame labelled defect",
    "duplicate": "the same bytes as another training image",
    "near_copy": "a near-copy of a frame already kept",
    "scene_cap": "one scene too many times (a stalled conveyor)",
    "second_opinion": "scored far above the threshold: waits for a second operator's good",
}


def _sha256(path: Path) -> str | None:
    """The file's SHA-256, or None when it cannot be read (a kept frame removed by retention, say)."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def held_out_for_review(sha256: str, share: float) -> bool:
    """Whether a confirmed good with this content hash is kept out of training as promotion evidence: the
    first 32 bits of the hash as a fraction of 2**32, below ``share`` (the same frame is held out every time)."""
    return int(sha256[:8], 16) / 2**32 < share


def defect_frame_hashes(engine: Engine) -> set[str]:
    """Content hashes of kept frames whose effective label is ``defect``, of every product (bytes an operator
    called a defect never train a model, even one of a product the frame was not routed to)."""
    eff = effective_labels()
    with engine.connect() as conn:
        uris = conn.execute(select(Inspection.image_uri).join(eff, eff.c.inspection_id == Inspection.id)
                            .where(eff.c.label == "defect", Inspection.image_uri.is_not(None))).scalars().all()
    return {h for h in (_sha256(path_of(u)) for u in uris) if h}


def base_images(active: ModelVersion | None, base_data: Path | None) -> list[Path]:
    """The base good images: ``base_data`` (a folder or dataset layout; the job's product's, see
    :func:`linewatch.contracts.trainer_settings.product_path`) if set, else the images the active model (of the
    job's product) was trained and calibrated on (its manifest's ``train``/``val`` entries, not what it left
    out)."""
    if base_data is not None:
        from linewatch.detector.datasets import open_dataset

        return list(open_dataset(base_data).train)
    if active is None:
        return []
    return [Path(item["path"]) for item in active.manifest
            if item.get("path") and item.get("role", "train") in TRAINED_ROLES]


def build_training_set(engine: Engine, active: ModelVersion | None, base_data: Path | None, *,
                       guards: TrainerSettings, product: str = DEFAULT_PRODUCT) -> TrainingSet:
    """Collect ``product``'s retraining set (see the module docstring); ``active``: that product's active version
    (None: none), ``base_data``: that product's base folder (None: the active version's images), ``guards``: the
    ``[trainer]`` settings."""
    out = TrainingSet()
    forbidden = defect_frame_hashes(engine)
    seen: dict[str, Path] = {}

    def drop(path: Path, digest: str | None, kind: str, reason: str, source: str = "confirmed") -> None:
        out.dropped.append({"path": str(path), "sha256": digest, "role": "dropped", "kind": kind, "reason": reason,
                            "source": source})

    def admit(path: Path, digest: str | None, confirmed: bool) -> bool:
        if digest is None:
            out.missing.append(str(path))
            if confirmed:
                drop(path, None, "missing", "missing: the kept image cannot be read")
            return False
        if digest in forbidden:
            out.excluded_defect += 1
            drop(path, digest, "labelled_defect", "same bytes as a frame labelled defect",
                 "confirmed" if confirmed else "base")
            return False
        if digest in seen:
            out.duplicates += 1
            if confirmed:
                drop(path, digest, "duplicate", f"same bytes as {seen[digest].name}")
            return False
        seen[digest] = path
        return True

    for path in base_images(active, base_data):
        if admit(path, _sha256(path), False):
            out.paths.append(path)
            out.base += 1
    with engine.connect() as conn:
        frames = confirmed_good_frames(conn, second_opinion_above=guards.second_opinion_above, product=product)
        waiting = awaiting_second_opinion(conn, second_opinion_above=guards.second_opinion_above, product=product)
    out.confirmed_found, out.awaiting = len(frames), len(waiting)
    for frame in waiting:
        path = path_of(frame.image_uri)
        drop(path, _sha256(path), "second_opinion", f"awaiting a second operator: scored "
             f"{frame.normalized_score:.2f} x threshold (> {guards.second_opinion_above:g}), confirmed good by "
             f"{frame.good_operators} operator(s)", "awaiting")
    candidates: list[Candidate] = []
    digests: dict[int, str] = {}
    for frame in frames:
        path = path_of(frame.image_uri)
        digest = _sha256(path)
        if not admit(path, digest, True):
            continue
        try:
            thumb = thumbnail(read_image(path))
        except ImageError as exc:  # a damaged kept file must not fail the whole job
            drop(path, digest, "unreadable", f"unreadable: {exc}")
            continue
        candidates.append(Candidate(path, frame.camera_id, frame.captured_at, thumb))
        digests[id(candidates[-1])] = digest
    kept, thinned = thin_out(candidates, guards)
    for frame, why in thinned:
        drop(frame.path, digests[id(frame)], "near_copy" if why.startswith("near-copy") else "scene_cap", why)
    for frame in kept:
        digest = digests[id(frame)]
        if held_out_for_review(digest, guards.review_share):
            out.held_out.append({"path": str(frame.path), "sha256": digest, "role": "held_out",
                                 "reason": "promotion evidence: never trained on"})
        else:
            out.paths.append(frame.path)
            out.confirmed += 1
    if out.missing:
        log.warning("%d training images are missing, e.g. %s", len(out.missing), out.missing[0])
    return out


def record_left_out(model_dir: Path, data: TrainingSet) -> list[dict]:
    """Append what ``data`` left out (role ``dropped`` or ``held_out``, with ``reason``) to the manifest in
    ``model_dir``'s ``model.json``, which the registry copies into its ``manifest`` column; returns the
    whole manifest. Raises ModelFileError or OSError as :func:`write_metadata` does."""
    meta = read_metadata(model_dir)
    meta["manifest"] = list(meta.get("manifest", [])) + data.manifest_entries()
    write_metadata(model_dir, meta)
    return meta["manifest"]
