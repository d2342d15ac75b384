"""A pixel-level Gaussian beside STPM's anomaly map, measured and not built: pixel AUROC and AU-PRO side by side.

    python bench/shared_gaussian_map.py [--datasets bottle magnetic_tile] [--models bench/results/models]
                                        [--out bench/results/shared_gaussian_map.json]

STPM's map is near chance on Magnetic Tile's "uneven" surfaces, which hold most of that set's defect pixels. This
measures one candidate for a second map, from the frozen teacher alone: at every position of a window the three
teacher stages (stride 4 and 8 average-pooled to stride 16) are concatenated (176 values for EfficientNet-Lite0), and
one Gaussian (Ledoit-Wolf), shared by all positions, is fit on a seeded sample of 60,000 positions of the training
goods' windows; a position's value is its Mahalanobis distance. It is PaDiM (Defard et al., ICPR 2020 workshops,
arXiv 2011.08785) with one Gaussian for all positions instead of one per position, since tiles and strips are not
aligned. Each window's 16x16 map is upsampled bilinearly to the window, stitched and resized to the frame as STPM's.

For each trained model in ``--models/<dataset>`` (``bench/accuracy.py`` trains them) it prints, overall and per defect
type: STPM's map, the shared Gaussian's map, and their fusion by the max rule on maps divided by their own pixel
thresholds (STPM's from ``model.json``; the Gaussian's the same quantile, 1 - ``pixel_false_positive_rate``, of its
values on the model's held-out goods). Nothing is fitted on test images.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"bottle": "mvtec_ad/bottle", "magnetic_tile": "magnetic_tile"}
SAMPLE = 60_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", type=Path, default=ROOT / "bench" / "results" / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "shared_gaussian_map.json")
    args = parser.parse_args()

    import os

    import numpy as np
    import torch
    import torch.nn.functional as F

    from linewatch.contracts.settings import Settings
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.evaluation import score_test_set
    from linewatch.detector.geometry import stitch
    from linewatch.detector.global_branch import fit_gaussian
    from linewatch.detector.imaging import read_image, resize_map
    from linewatch.detector.metrics import PixelSet
    from linewatch.detector.runtimes.threads import apply_torch_threads, intra_op_threads
    from linewatch.detector.scoring import Scorer

    apply_torch_threads(intra_op_threads())
    data_root = Path(os.environ.get("LINEWATCH_DATA_ROOT", Settings().data_root))

    @torch.no_grad()
    def position_features(stpm, windows: np.ndarray) -> torch.Tensor:
        """uint8 (N, 3, S, S) -> float32 (N, 176, S/16, S/16): the stages pooled to the coarsest one's grid."""
        out = []
        for start in range(0, len(windows), 16):
            stages = stpm.teacher(stpm.normalize_input(torch.from_numpy(windows[start : start + 16])))
            size = stages[-1].shape[-2:]
            out.append(torch.cat([F.adaptive_avg_pool2d(s.float(), size) for s in stages], dim=1))
        return torch.cat(out)

    def distances(features: torch.Tensor, mean: np.ndarray, factor: torch.Tensor, size: int) -> np.ndarray:
        n, c, h, w = features.shape
        centred = features.permute(0, 2, 3, 1).reshape(-1, c) - torch.from_numpy(mean).float()
        d = (centred @ factor).pow(2).sum(dim=1).sqrt().reshape(n, 1, h, w)
        return F.interpolate(d, size=size, mode="bilinear", align_corners=False)[:, 0].numpy()

    def measure(name: str) -> dict:
        model_dir = args.models / name
        scorer = Scorer(model_dir, "cpu", runtime="torch")
        stpm, meta, size = scorer.model.stpm, scorer.model.metadata, scorer.geometry.size
        paths = {role: [e["path"] for e in meta["manifest"] if e["role"] == role] for role in ("train", "val")}
        train = position_features(stpm, np.concatenate([scorer.windows(read_image(p)) for p in paths["train"]]))
        flat = train.permute(0, 2, 3, 1).reshape(-1, train.shape[1]).double().numpy()
        sample = np.random.default_rng(0).choice(len(flat), min(SAMPLE, len(flat)), replace=False)
        mean, precision, shrinkage = fit_gaussian(flat[sample])
        factor = torch.from_numpy(np.linalg.cholesky((precision + precision.T) / 2)).float()
        held_out = np.concatenate([distances(position_features(stpm, scorer.windows(read_image(p))), mean, factor,
                                             size).ravel() for p in paths["val"]])
        rate = float(meta["thresholds"]["pixel_false_positive_rate"])
        own_threshold, stpm_threshold = float(np.quantile(held_out, 1 - rate)), float(meta["thresholds"]["pixel"])
        gaussian_maps = []

        def on_scored(item, rgb):
            frame = scorer.prepare(rgb)
            window_maps = distances(position_features(stpm, np.asarray(frame.tiles)), mean, factor, size)
            gaussian_maps.append(resize_map(stitch(window_maps, frame.plan), item.mask.shape))

        dataset = open_dataset(data_root / DATASETS[name])
        items = score_test_set(scorer, dataset, progress=False, on_scored=on_scored)
        masks = [it.mask for it in items]
        maps = {"stpm": [it.anomaly_map for it in items], "shared gaussian": gaussian_maps,
                "max of both / own threshold": [np.maximum(it.anomaly_map / stpm_threshold, g / own_threshold)
                                                for it, g in zip(items, gaussian_maps, strict=True)]}
        good = [i for i, it in enumerate(items) if not it.sample.is_defect]
        groups = {"overall": list(range(len(items)))}
        groups.update({t: good + [i for i, it in enumerate(items) if it.sample.label == t]
                       for t in dataset.defect_types})
        result = {"fitted_on_positions": int(len(sample)), "shrinkage": shrinkage, "maps": {}}
        for map_name, per_image in maps.items():
            pixels = PixelSet(masks, per_image)
            result["maps"][map_name] = {g: {"pixel_auroc": pixels.auroc(idx), "au_pro": pixels.au_pro(idx)}
                                      for g, idx in groups.items()}
        print(f"\n{name}: pixel AUROC / AU-PRO ({result['fitted_on_positions']} positions, shrinkage "
              f"{shrinkage:.3f})\n| map | " + " | ".join(groups) + " |\n|" + " --- |" * (len(groups) + 1))
        for map_name, per_group in result["maps"].items():
            cells = " | ".join(f"{v['pixel_auroc']:.3f} / {v['au_pro']:.3f}" for v in per_group.values())
            print(f"| {map_name} | {cells} |", flush=True)
        return result

    results = {name: measure(name) for name in args.datasets}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
