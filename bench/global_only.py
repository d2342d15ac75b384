"""The global branch alone, without a trained student: image AUROC of its Mahalanobis distance, per defect type.

    python bench/global_only.py [--datasets bottle magnetic_tile] [--out bench/results/global_only.json]

The branch depends only on the frozen teacher, so it can be measured where no STPM model is at hand: the default
recipe's input geometry and held-out split (``TrainConfig`` defaults, ``split_indices``) prepare the good training
images; the branch is fit on the training part (never the held-out part) exactly as training fits it
(:func:`linewatch.detector.global_fit.teacher_pooled`, :func:`linewatch.detector.global_branch.fit_gaussian`), and
each test image scores the largest distance of its windows, as :func:`linewatch.detector.scoring.frame_scores`
does. Image AUROC overall and per defect type (its images against all good test images). No threshold is involved.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"bottle": "mvtec_ad/bottle", "magnetic_tile": "magnetic_tile"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "global_only.json")
    args = parser.parse_args()

    import numpy as np
    import torch

    from linewatch.contracts.settings import Settings
    from linewatch.detector.backbones import backbone_spec, build_student, build_teacher
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.global_branch import GlobalGaussian, fit_gaussian
    from linewatch.detector.global_fit import teacher_pooled
    from linewatch.detector.metrics import image_auroc
    from linewatch.detector.runtimes.threads import apply_torch_threads, intra_op_threads
    from linewatch.detector.stpm import STPM
    from linewatch.detector.training import TrainConfig
    from linewatch.detector.training_set import load_images, split_indices

    apply_torch_threads(intra_op_threads())
    settings = Settings()
    config = TrainConfig.from_settings(settings, device="cpu")
    teacher, _ = build_teacher(config.backbone, config.teacher_weights)
    model = STPM(backbone_spec(config.backbone), teacher, build_student(config.backbone), 0.0).eval()
    cpu = torch.device("cpu")
    data_root = Path(os.environ.get("LINEWATCH_DATA_ROOT", settings.data_root))
    results = {}
    for name in args.datasets:
        started = time.monotonic()
        dataset = open_dataset(data_root / DATASETS[name])
        train_idx, _ = split_indices(len(dataset.train), config.val_fraction, config.seed)
        goods = load_images([dataset.train[i] for i in train_idx], config.geometry(), config.max_pixels)
        mean, precision, shrinkage = fit_gaussian(teacher_pooled(model, goods.windows(range(len(train_idx))), cpu))
        branch = GlobalGaussian(mean, precision)
        test = load_images([s.path for s in dataset.test], goods.geometry, config.max_pixels)
        scores = []
        for frame in test.frames:
            with torch.no_grad():
                x = model.normalize_input(torch.from_numpy(np.asarray(frame.tiles)))
                scores.append(float(branch(model.teacher(x)).max()))
        labels = [s.is_defect for s in dataset.test]
        good = [i for i, s in enumerate(dataset.test) if not s.is_defect]
        per_type = {}
        for label in sorted({s.label for s in dataset.test if s.is_defect}):
            idx = good + [i for i, s in enumerate(dataset.test) if s.label == label]
            per_type[label] = image_auroc([labels[i] for i in idx], [scores[i] for i in idx])
        results[name] = {"image_auroc_global": image_auroc(labels, scores), "per_defect_type": per_type,
                         "fitted_on": len(goods.windows(range(len(train_idx)))), "shrinkage": shrinkage,
                         "seconds": round(time.monotonic() - started, 1)}
        print(name, json.dumps(results[name]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
