"""The global branch alone, without a trained student: image AUROC of its Mahalanobis distance, per defect type.

    python bench/global_only.py [--datasets bottle magnetic_tile] [--poolings mean_std mean]
                                [--out bench/results/global_only.json]

The branch depends only on the frozen teacher, so it can be measured where no STPM model is at hand: the default
recipe's input geometry and held-out split (``TrainConfig`` defaults, ``split_indices``) prepare the good training
images; the branch is fit on the training part (never the held-out part) exactly as training fits it
(:func:`linewatch.detector.global_fit.teacher_pooled`, :func:`linewatch.detector.global_branch.fit_gaussian`), and
each test image scores the largest distance of its windows, as :func:`linewatch.detector.scoring.frame_scores`
does. Image AUROC overall and per defect type (its images against all good test images). No threshold is involved.
Each pooling (``mean_std``: each stage's per-channel mean and standard deviation, the default since 2026-12-02;
``mean``: the means alone, as before; :func:`linewatch.detector.global_branch.pooled_features`) is fit and scored on
the same windows, side by side in one table.
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
    parser.add_argument("--poolings", nargs="+", default=["mean_std", "mean"], choices=["mean_std", "mean"])
    args = parser.parse_args()

    import numpy as np
    import torch

    from linewatch.contracts.settings import Settings
    from linewatch.detector.backbones import backbone_spec, build_student, build_teacher
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.global_branch import MEAN, MEAN_STD, GlobalGaussian, fit_gaussian
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
    rows = []
    for name in args.datasets:
        dataset = open_dataset(data_root / DATASETS[name])
        train_idx, _ = split_indices(len(dataset.train), config.val_fraction, config.seed)
        goods = load_images([dataset.train[i] for i in train_idx], config.geometry(), config.max_pixels)
        train_windows = goods.windows(range(len(train_idx)))
        test = load_images([s.path for s in dataset.test], goods.geometry, config.max_pixels)
        labels = [s.is_defect for s in dataset.test]
        good = [i for i, s in enumerate(dataset.test) if not s.is_defect]
        types = sorted({s.label for s in dataset.test if s.is_defect})
        results[name] = {}
        for pooling in [{"mean_std": MEAN_STD, "mean": MEAN}[p] for p in args.poolings]:
            started = time.monotonic()
            mean, precision, shrinkage = fit_gaussian(teacher_pooled(model, train_windows, cpu, pooling=pooling))
            branch = GlobalGaussian(mean, precision, pooling=pooling)
            scores = []
            for frame in test.frames:
                with torch.no_grad():
                    x = model.normalize_input(torch.from_numpy(np.asarray(frame.tiles)))
                    scores.append(float(branch(model.teacher(x)).max()))
            per_type = {}
            for label in types:
                idx = good + [i for i, s in enumerate(dataset.test) if s.label == label]
                per_type[label] = image_auroc([labels[i] for i in idx], [scores[i] for i in idx])
            results[name][pooling] = {"image_auroc_global": image_auroc(labels, scores), "per_defect_type": per_type,
                                      "dim": len(mean), "fitted_on": len(train_windows), "shrinkage": shrinkage,
                                      "seconds": round(time.monotonic() - started, 1)}
            print(name, pooling, json.dumps(results[name][pooling]), flush=True)
            rows.append((name, pooling, results[name][pooling]))
    print("\n| dataset | pooling | D | image AUROC | per defect type |\n| --- | --- | --- | --- | --- |")
    for name, pooling, r in rows:
        per = ", ".join(f"{k} {v:.3f}" for k, v in r["per_defect_type"].items())
        print(f"| {name} | {pooling} | {r['dim']} | {r['image_auroc_global']:.3f} | {per} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
