"""Evaluation of a model on a labelled test set with the metrics the STPM paper reports (see :mod:`.metrics`).

Each image is scored at model resolution, under the model's input geometry (:mod:`.geometry`): its image score
is the maximum of its smoothed anomaly map there (:mod:`.stpm`). For the pixel metrics that map is resized
bilinearly to the image's original size, and compared with the mask at that size (the authors' code compares at
256x256 instead). Reported overall and per defect type (that type's images plus all good test images), with the
false-reject rate on good images and the miss rate on defective ones at the stored image threshold
(defective = score above it). For a model with a global branch (:mod:`.global_branch`) the image score is the
fused one, and the image AUROC, false-reject and miss rates of STPM alone (``*_stpm``, at STPM's threshold) and
the global branch alone (``*_global``, at its own) are reported beside it; the pixel metrics are STPM's map's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm.auto import tqdm

from linewatch.contracts.heatmap import render_overlay

from .calibration import f1_optimal_threshold
from .datasets import Dataset, DatasetError, Sample
from .imaging import read_image, read_mask
from .metrics import PixelSet, image_auroc
from .scoring import Scorer


@dataclass
class ScoredSample:
    """A test image after scoring: its image score (map units; fused with a global branch), its full-resolution map
    and its ground-truth mask (all False for a good image or a defect image without a mask); with a global branch
    also STPM's own score (``local_score``) and the Mahalanobis distance (``global_score``), else None."""

    sample: Sample
    score: float
    anomaly_map: np.ndarray  # float32 (H, W)
    mask: np.ndarray  # bool (H, W)
    local_score: float | None = None
    global_score: float | None = None


def score_test_set(
    scorer: Scorer, dataset: Dataset, batch_size: int = 16, progress: bool = True,
    on_scored: Callable[[ScoredSample, np.ndarray], None] | None = None,
) -> list[ScoredSample]:
    """Score every test image of ``dataset``, in its order; ``on_scored(item, rgb)`` sees each one with its
    uint8 (H, W, 3) image.

    Raises:
        DatasetError: the dataset has no test images. ImageError: an unreadable image or mask.
    """
    if not dataset.test:
        raise DatasetError(f"{dataset.root}: no test images to evaluate on")
    out: list[ScoredSample] = []
    bar = tqdm(total=len(dataset.test), desc="eval", unit="img", disable=not progress, dynamic_ncols=True)

    def load(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        rgb = read_image(sample.path)
        if sample.mask is None:
            mask = np.zeros(rgb.shape[:2], dtype=bool)
        else:
            mask = read_mask(sample.mask, rgb.shape[:2], dataset.mask_threshold)
        return rgb, mask

    with ThreadPoolExecutor(max_workers=4) as pool:
        for start in range(0, len(dataset.test), batch_size):
            chunk = dataset.test[start : start + batch_size]
            loaded = list(pool.map(load, chunk))
            scores = scorer.score_frames([scorer.prepare(rgb, str(s.path)) for s, (rgb, _) in zip(chunk, loaded,
                                                                                                  strict=True)])
            for i, (sample, (rgb, mask)) in enumerate(zip(chunk, loaded, strict=True)):
                full = scorer.full_resolution_map(scores.maps[i], rgb.shape[:2])
                item = ScoredSample(sample, float(scores.image_scores[i]), full, mask,
                                    *((None, None) if scores.global_scores is None else
                                      (float(scores.local_scores[i]), float(scores.global_scores[i]))))
                out.append(item)
                if on_scored is not None:
                    on_scored(item, rgb)
            bar.update(len(chunk))
    bar.close()
    return out


def metrics_of(items: list[ScoredSample], pixels: PixelSet, indices: list[int]) -> dict[str, float | None]:
    """Image AUROC, pixel AUROC and AU-PRO of ``items[indices]`` (None where a metric is undefined).
    Pixel metrics use only the images whose pixel labels are known (see ``Sample.pixels_known``)."""
    subset = [items[i] for i in indices]
    labels = [it.sample.is_defect for it in subset]
    out: dict[str, float | None] = {"image_auroc": None, "pixel_auroc": None, "au_pro": None}
    if any(labels) and not all(labels):
        out["image_auroc"] = image_auroc(labels, [it.score for it in subset])
        if subset[0].global_score is not None:  # the branches alone, beside the fused score
            out["image_auroc_stpm"] = image_auroc(labels, [it.local_score for it in subset])
            out["image_auroc_global"] = image_auroc(labels, [it.global_score for it in subset])
    known = _pixels_known(items, indices)
    if any(items[i].mask.any() for i in known):
        out["pixel_auroc"] = pixels.auroc(known)
        out["au_pro"] = pixels.au_pro(known)
    return out


def _pixels_known(items: list[ScoredSample], indices: list[int]) -> list[int]:
    return [i for i in indices if items[i].sample.pixels_known]


def evaluate(
    scorer: Scorer, dataset: Dataset, *, batch_size: int = 16, maps_dir: Path | None = None, progress: bool = True
) -> dict[str, Any]:
    """Evaluate ``scorer`` on ``dataset``'s test set -> a JSON-ready report.

    The report has ``dataset``, ``model`` (path, version, backbone, thresholds, smoothing sigma), ``overall``
    and ``per_defect_type`` metrics (None where undefined), ``f1_optimal`` thresholds and ``seconds``.
    ``maps_dir``: also write one heatmap overlay PNG per test image to ``maps_dir/<label>/<name>.png``.

    Raises:
        DatasetError: the dataset has no test images. ImageError: an unreadable image or mask.
    """
    started = time.monotonic()
    image_threshold, pixel_threshold = scorer.image_threshold, scorer.pixel_threshold

    def write_overlay(item: ScoredSample, rgb: np.ndarray) -> None:
        target = Path(maps_dir) / item.sample.label / f"{item.sample.path.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        overlay = render_overlay(rgb, item.anomaly_map, pixel_threshold, score=item.score / image_threshold)
        cv2.imwrite(str(target), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))

    items = score_test_set(scorer, dataset, batch_size, progress, write_overlay if maps_dir else None)
    pixels = PixelSet([it.mask for it in items], [it.anomaly_map for it in items])
    good = [i for i, it in enumerate(items) if not it.sample.is_defect]
    defect = [i for i, it in enumerate(items) if it.sample.is_defect]

    def flagged(indices: list[int], key: str = "score", threshold: float = image_threshold) -> float | None:
        return None if not indices else float(np.mean([getattr(items[i], key) > threshold for i in indices]))

    overall = {**metrics_of(items, pixels, list(range(len(items)))), "false_reject_rate": flagged(good),
               "miss_rate": None if not defect else 1.0 - flagged(defect), "images": len(items)}
    branch = scorer.model.stpm.global_branch
    if items and items[0].global_score is not None and branch is not None:
        global_threshold = image_threshold / branch.scale  # the scorer's runtime's thresholds.global
        for key, name, t in (("local_score", "stpm", image_threshold), ("global_score", "global", global_threshold)):
            overall[f"false_reject_rate_{name}"] = flagged(good, key, t)
            overall[f"miss_rate_{name}"] = None if not defect else 1.0 - flagged(defect, key, t)
    f1: dict[str, Any] = {}  # computed right after the overall metrics, which share its cumulative counts
    known = _pixels_known(items, list(range(len(items))))
    if any(items[i].mask.any() for i in known):
        t, f = pixels.f1_optimal_threshold(known)
        f1["pixel"] = {"threshold": t, "f1": f}
    if good and defect:
        t, f = f1_optimal_threshold([it.sample.is_defect for it in items], [it.score for it in items])
        f1["image"] = {"threshold": t, "f1": f, "normalized_threshold": t / image_threshold}
    per_type = {}
    for label in dataset.defect_types:
        subset = [i for i in defect if items[i].sample.label == label]
        per_type[label] = {**metrics_of(items, pixels, good + subset), "miss_rate": 1.0 - flagged(subset),
                           "images": len(subset)}

    return {
        "dataset": {"root": str(dataset.root), "layout": dataset.layout, "test_images": len(items),
                    "good": len(good), "defective": len(defect), "defect_types": dataset.defect_types,
                    "defective_without_mask": len(items) - len(known)},
        "model": {"path": str(scorer.model.path), "version": scorer.version,
                  "backbone": scorer.model.metadata["backbone"], "thresholds": scorer.model.thresholds,
                  "map_smoothing_sigma": scorer.model.stpm.smoothing_sigma},
        "overall": overall,
        "per_defect_type": per_type,
        "f1_optimal": f1,
        "seconds": round(time.monotonic() - started, 2),
    }
