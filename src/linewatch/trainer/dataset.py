"""The retraining set: the base good images plus the operator-confirmed good frames, de-duplicated by
content hash, never including a frame labelled defect (nor any image with the same bytes as one)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Engine

from linewatch.contracts.files import path_of, sha256_file
from linewatch.contracts.labels import confirmed_good_frames, effective_labels
from linewatch.contracts.schema import Inspection, ModelVersion

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    """Image files to train on, where each came from, and what was left out and why."""

    paths: list[Path] = field(default_factory=list)
    base: int = 0
    confirmed: int = 0
    duplicates: int = 0
    excluded_defect: int = 0
    missing: list[str] = field(default_factory=list)


def _sha256(path: Path) -> str | None:
    """The file's SHA-256, or None when it cannot be read (a kept frame removed by retention, say)."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def defect_frame_hashes(engine: Engine) -> set[str]:
    """Content hashes of kept frames whose effective label is ``defect``."""
    eff = effective_labels()
    with engine.connect() as conn:
        uris = conn.execute(select(Inspection.image_uri).join(eff, eff.c.inspection_id == Inspection.id)
                            .where(eff.c.label == "defect", Inspection.image_uri.is_not(None))).scalars().all()
    return {h for h in (_sha256(path_of(u)) for u in uris) if h}


def base_images(active: ModelVersion | None, base_data: Path | None) -> list[Path]:
    """The base good images: ``base_data`` (a folder or dataset layout) if set, else the active model's manifest."""
    if base_data is not None:
        from linewatch.detector.datasets import open_dataset

        return list(open_dataset(base_data).train)
    if active is None:
        return []
    return [Path(item["path"]) for item in active.manifest if item.get("path")]


def build_training_set(engine: Engine, active: ModelVersion | None, base_data: Path | None) -> TrainingSet:
    """Collect the retraining set (see the module docstring)."""
    out = TrainingSet()
    forbidden = defect_frame_hashes(engine)
    seen: set[str] = set()

    def add(path: Path) -> bool:
        digest = _sha256(path)
        if digest is None:
            out.missing.append(str(path))
            return False
        if digest in forbidden:
            out.excluded_defect += 1
            return False
        if digest in seen:
            out.duplicates += 1
            return False
        seen.add(digest)
        out.paths.append(path)
        return True

    for path in base_images(active, base_data):
        out.base += add(path)
    with engine.connect() as conn:
        frames = confirmed_good_frames(conn)
    for frame in frames:
        out.confirmed += add(path_of(frame.image_uri))
    if out.missing:
        log.warning("%d training images are missing, e.g. %s", len(out.missing), out.missing[0])
    return out
