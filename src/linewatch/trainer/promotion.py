"""Candidate against active model, on the operators' labelled review set, and the promotion rule.

The rule (a candidate is activated automatically only when it is *not worse* on the same frames):

1. it misses no larger share of the frames labelled defect (miss rate <= the active model's),
2. it rejects no larger share of the frames labelled good (false-reject rate <= the active model's),
3. where both classes are labelled, its image AUROC is at most 0.01 below the active model's.

Each model is judged at its own stored threshold. With no labelled frames nothing says the candidate
is worse, and it is promoted. Note the bias: the confirmed-good frames are also training images of the
candidate, which favours it on rule 2 — the defect-labelled frames (rule 1) are never trained on.
An operator can still activate a rejected candidate (recorded as an override).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from linewatch.contracts.files import path_of
from linewatch.contracts.labels import effective_labels
from linewatch.contracts.schema import Inspection
from linewatch.detector.imaging import ImageError, read_image
from linewatch.detector.metrics import image_auroc
from linewatch.detector.scoring import Scorer

AUROC_TOLERANCE = 0.01


@dataclass
class LabelledFrame:
    path: Path
    is_defect: bool


def labelled_review_set(engine: Engine) -> list[LabelledFrame]:
    """Kept frames with an effective operator label, oldest first."""
    eff = effective_labels()
    with engine.connect() as conn:
        rows = conn.execute(select(Inspection.image_uri, eff.c.label).join(eff, eff.c.inspection_id == Inspection.id)
                            .where(Inspection.image_uri.is_not(None)).order_by(Inspection.id)).all()
    return [LabelledFrame(path_of(uri), label == "defect") for uri, label in rows]


def judge(scorer: Scorer, frames: list[LabelledFrame], batch_size: int = 16) -> dict:
    """A model's image AUROC, false-reject rate and miss rate on labelled frames (unreadable ones skipped)."""
    scores, labels = [], []
    for start in range(0, len(frames), batch_size):
        batch, batch_labels = [], []
        for frame in frames[start : start + batch_size]:
            try:
                batch.append(scorer.prepare(read_image(frame.path)))
                batch_labels.append(frame.is_defect)
            except ImageError:
                continue
        if batch:
            scores.extend(scorer.score(np.stack(batch)).image_scores.tolist())
            labels.extend(batch_labels)
    s, y = np.asarray(scores), np.asarray(labels, dtype=bool)
    flagged = s > scorer.image_threshold
    return {
        "frames": int(len(s)), "good": int((~y).sum()), "defect": int(y.sum()),
        "image_auroc": image_auroc(y, s) if y.any() and (~y).any() else None,
        "false_reject_rate": float(flagged[~y].mean()) if (~y).any() else None,
        "miss_rate": float((~flagged[y]).mean()) if y.any() else None,
    }


def promotion_decision(candidate: dict, active: dict | None) -> tuple[bool, str]:
    """Apply the rule of the module docstring -> (promote, reason)."""
    if active is None:
        return True, "no active model to compare with"
    if candidate["frames"] == 0:
        return True, "no labelled frames to compare on"
    worse = []
    if candidate["miss_rate"] is not None and candidate["miss_rate"] > active["miss_rate"]:
        worse.append(f"miss rate {candidate['miss_rate']:.3f} > {active['miss_rate']:.3f}")
    if candidate["false_reject_rate"] is not None and candidate["false_reject_rate"] > active["false_reject_rate"]:
        worse.append(f"false-reject rate {candidate['false_reject_rate']:.3f} > {active['false_reject_rate']:.3f}")
    if candidate["image_auroc"] is not None and candidate["image_auroc"] < active["image_auroc"] - AUROC_TOLERANCE:
        worse.append(f"image AUROC {candidate['image_auroc']:.3f} < {active['image_auroc']:.3f} - {AUROC_TOLERANCE}")
    if worse:
        return False, "worse than the active model on the labelled frames: " + "; ".join(worse)
    return True, f"not worse than the active model on {candidate['frames']} labelled frames"
