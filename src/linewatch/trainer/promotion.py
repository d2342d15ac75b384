"""Candidate against active model, on evidence neither trained on, and the promotion rule.

A candidate of a product is compared with that product's active version, on that product's evidence only.
Evidence (:func:`review_set`), on both sides:

* goods: confirmed goods of the product's inspections (``contracts.labels``, second-opinion rule included) that
  are not in the candidate's
  manifest as trained, calibrated or dropped (by content hash): in practice the share held out of training
  (``trainer.review_share``) and goods confirmed after the job collected its set. A candidate's own training
  frames are never evidence;
* defects: the product's kept frames whose effective label is defect, plus the reference defect images of the
  product (``trainer.defect_reference``, optional, :func:`~linewatch.contracts.trainer_settings.product_path`),
  again minus anything in the candidate's manifest.

The rule (:func:`promotion_decision`): a candidate is activated automatically only when

1. there is evidence on both sides (at least one good and one defect) — otherwise it says which is missing;
2. its image threshold moved by at most ``trainer.max_threshold_change`` (either way) from the active model's;
3. it misses no more known defects than the active model;
4. it rejects no larger share of the goods than the active model;
5. where both classes are present, its image AUROC is at most 0.01 below the active model's.

Each model is judged at its own stored threshold. With no active model, rules 2-5 have nothing to compare
with and rule 1 alone decides. An operator can still activate a rejected candidate (recorded as an override).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sqlalchemy import select
from sqlalchemy.engine import Engine

from linewatch.contracts.files import IMAGE_SUFFIXES, path_of, sha256_file
from linewatch.contracts.labels import confirmed_good_frames, effective_labels
from linewatch.contracts.products import DEFAULT_PRODUCT
from linewatch.contracts.schema import Inspection
from linewatch.contracts.trainer_settings import TrainerSettings, product_path
from linewatch.detector.imaging import ImageError, read_image
from linewatch.detector.metrics import image_auroc
from linewatch.detector.scoring import Scorer

AUROC_TOLERANCE = 0.01


@dataclass
class LabelledFrame:
    path: Path
    is_defect: bool


@dataclass
class Evidence:
    """The review set and where it came from: ``frames`` to judge on; counts of confirmed goods, confirmed
    defects and reference defects in it; ``excluded``: frames left out as the candidate's own."""

    frames: list[LabelledFrame]
    goods: int
    defects: int
    reference: int
    excluded: int

    def summary(self) -> dict:
        return {"goods": self.goods, "confirmed_defects": self.defects, "reference_defects": self.reference,
                "excluded_as_training_frames": self.excluded}


def _digest(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def reference_defects(folder: Path | None) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted); none when ``folder`` is None.

    Raises:
        FileNotFoundError: ``folder`` is set but is not a directory (a misconfigured path must not pass for
        "no defects known").
    """
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"trainer.defect_reference {folder} is not a directory")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def review_set(engine: Engine, guards: TrainerSettings, candidate_manifest: list[dict],
               product: str = DEFAULT_PRODUCT) -> Evidence:
    """The evidence of the module docstring, of ``product``; ``candidate_manifest``: the candidate's
    ``model.json`` manifest. Raises FileNotFoundError as :func:`reference_defects`."""
    own = {m["sha256"] for m in candidate_manifest if m.get("sha256") and m.get("role") != "held_out"}
    eff = effective_labels()
    with engine.connect() as conn:
        goods = [path_of(r.image_uri) for r in
                 confirmed_good_frames(conn, second_opinion_above=guards.second_opinion_above, product=product)]
        defects = [path_of(u) for u in conn.execute(
            select(Inspection.image_uri).join(eff, eff.c.inspection_id == Inspection.id)
            .where(eff.c.label == "defect", Inspection.image_uri.is_not(None), Inspection.product == product)
            .order_by(Inspection.id)).scalars()]
    reference = reference_defects(product_path(guards.defect_reference, product))
    frames, excluded, counts, seen = [], 0, [0, 0, 0], set()
    for kind, (paths, is_defect) in enumerate(((goods, False), (defects, True), (reference, True))):
        for path in paths:
            digest = _digest(path)
            if digest is None or digest in seen:
                continue  # a missing kept file is no evidence; the same bytes count once
            seen.add(digest)
            if digest in own:
                excluded += 1
                continue
            frames.append(LabelledFrame(path, is_defect))
            counts[kind] += 1
    return Evidence(frames, counts[0], counts[1], counts[2], excluded)


def judge(scorer: Scorer, frames: list[LabelledFrame], batch_size: int = 16) -> dict:
    """A model's image AUROC, false rejects and misses (counts and rates) on labelled frames at its own
    threshold (``threshold``, raw image score); unreadable frames are skipped."""
    scores, labels = [], []
    for start in range(0, len(frames), batch_size):
        batch, batch_labels = [], []
        for frame in frames[start : start + batch_size]:
            try:
                batch.append(scorer.prepare(read_image(frame.path), str(frame.path)))
                batch_labels.append(frame.is_defect)
            except ImageError:
                continue
        if batch:
            scores.extend(scorer.score_frames(batch).image_scores.tolist())
            labels.extend(batch_labels)
    s, y = np.asarray(scores), np.asarray(labels, dtype=bool)
    flagged = s > scorer.image_threshold
    return {
        "frames": int(len(s)), "good": int((~y).sum()), "defect": int(y.sum()),
        "threshold": float(scorer.image_threshold),
        "false_rejects": int(flagged[~y].sum()), "misses": int((~flagged[y]).sum()),
        "image_auroc": image_auroc(y, s) if y.any() and (~y).any() else None,
        "false_reject_rate": float(flagged[~y].mean()) if (~y).any() else None,
        "miss_rate": float((~flagged[y]).mean()) if y.any() else None,
    }


def promotion_decision(candidate: dict, active: dict | None, max_threshold_change: float) -> tuple[bool, str]:
    """Apply the rule of the module docstring to :func:`judge` results -> (promote, reason)."""
    refused = []
    if candidate["good"] == 0:
        refused.append("no false-reject evidence: no confirmed good frame outside the candidate's training set")
    if candidate["defect"] == 0:
        refused.append("no defect evidence: no operator-confirmed defect frame and no reference defect images "
                       "(trainer.defect_reference)")
    if active is not None:
        ratio = candidate["threshold"] / active["threshold"]
        if max(ratio, 1 / ratio) > max_threshold_change:
            refused.append(f"threshold moved {ratio:.2f}x from the active model's (limit {max_threshold_change:g}x "
                           "either way)")
        if candidate["defect"] and candidate["misses"] > active["misses"]:
            refused.append(f"misses rose: {candidate['misses']} of {candidate['defect']} known defects missed "
                           f"(active model: {active['misses']})")
        if candidate["good"] and candidate["false_reject_rate"] > active["false_reject_rate"]:
            refused.append(f"false-reject rate {candidate['false_reject_rate']:.3f} > "
                           f"{active['false_reject_rate']:.3f} on {candidate['good']} goods")
        if candidate["image_auroc"] is not None and candidate["image_auroc"] < active["image_auroc"] - AUROC_TOLERANCE:
            refused.append(f"image AUROC {candidate['image_auroc']:.3f} < {active['image_auroc']:.3f} - "
                           f"{AUROC_TOLERANCE}")
    if refused:
        return False, "not activated automatically: " + "; ".join(refused)
    evidence = f"{candidate['good']} goods and {candidate['defect']} known defects it never trained on"
    if active is None:
        return True, f"no active model to compare with; evidence: {evidence}"
    return True, f"not worse than the active model on {evidence}"


def review_candidate(engine: Engine, guards: TrainerSettings, candidate: Scorer, candidate_manifest: list[dict],
                     active: Scorer | None, product: str = DEFAULT_PRODUCT) -> tuple[bool, str, dict]:
    """Gather ``product``'s evidence, judge both models on it (``active``: that product's active version) and
    decide -> (promote, reason, metrics for the registry: ``evidence``, ``review_set`` (candidate),
    ``active_on_review_set``, ``decision``).

    Raises:
        FileNotFoundError: ``trainer.defect_reference`` is set but the product's folder is missing.
    """
    evidence = review_set(engine, guards, candidate_manifest, product)
    candidate_scores = judge(candidate, evidence.frames)
    active_scores = judge(active, evidence.frames) if active is not None else None
    promote, reason = promotion_decision(candidate_scores, active_scores, guards.max_threshold_change)
    return promote, reason, {"evidence": evidence.summary(), "review_set": candidate_scores,
                             "active_on_review_set": active_scores, "decision": reason}
