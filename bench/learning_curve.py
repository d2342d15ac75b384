"""Learning curve: accuracy against the number of good training images, with and without the few-shot recipe.

    nice -n 10 python bench/learning_curve.py [--datasets bottle magnetic_tile] [--sizes 8 16 32 all]
        [--recipes few_shot default] [--min-steps 120] [--all-models DIR]

For each dataset and size N: trains on N good training images (the first N of one seeded shuffle, so each size's
images include the smaller sizes'), under each recipe, and evaluates on the dataset's full test set
(``linewatch.detector.evaluation``: image AUROC, pixel AUROC, AU-PRO, and the false-reject and miss rates at the
model's own threshold). Recipes: ``default`` is the settings' recipe (no augmentation; 20 epochs, raised to at
least 360 SGD steps since 2026-12-02: the rows of bench/README.md were measured before, at 20 epochs); ``few_shot``
adds the augmentation of ``linewatch.detector.recipe`` and sets its epoch budget (``augment``, ``min_steps`` =
``--min-steps``; flips and quarter turns stay off: bottle and tile are not checked for them here). With N < 25 fewer
than 5 images are held out, so thresholds are under-calibrated (allowed here; the metrics other than the two rates
do not use them). ``all``: with ``--all-models DIR``, the model ``DIR/<dataset>`` is evaluated (trained elsewhere,
whatever its recipe: its model.json's ``training`` says), else it is trained here with the default recipe. Each row
is appended to ``bench/results/learning_curve.json`` as soon as it is measured. Data: ``LINEWATCH_DATA_ROOT`` or
``../shared/data``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"bottle": "mvtec_ad/bottle", "magnetic_tile": "magnetic_tile"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--sizes", nargs="+", default=["8", "16", "32", "all"])
    parser.add_argument("--recipes", nargs="+", default=["few_shot", "default"], choices=["few_shot", "default"])
    parser.add_argument("--min-steps", type=int, default=120, help="the few-shot recipe's epoch budget")
    parser.add_argument("--all-models", type=Path, default=None, help="folder of <dataset> models for 'all'")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "learning_curve.json")
    args = parser.parse_args()

    from linewatch.contracts.settings import Settings
    from linewatch.detector.datasets import open_dataset
    from linewatch.detector.evaluation import evaluate
    from linewatch.detector.model_files import read_metadata
    from linewatch.detector.scoring import Scorer
    from linewatch.detector.training import TrainConfig, train

    settings = Settings()
    data_root = Path(os.environ.get("LINEWATCH_DATA_ROOT", settings.data_root))
    results = json.loads(args.out.read_text())["results"] if args.out.exists() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for size in args.sizes:
        for name in args.datasets:
            dataset = open_dataset(data_root / DATASETS[name])
            order = np.random.default_rng(0).permutation(len(dataset.train))
            n = len(dataset.train) if size == "all" else int(size)
            images = [dataset.train[i] for i in order[:n]]
            for recipe in (["default"] if size == "all" else args.recipes):
                started = time.monotonic()
                model_dir = args.out.parent / "models" / "learning_curve" / f"{name}-{size}-{recipe}"
                if size == "all" and args.all_models is not None:
                    model_dir, trained = args.all_models / name, False
                else:
                    few = {"augment": True, "min_steps": args.min_steps} if recipe == "few_shot" else {}
                    config = TrainConfig.from_settings(settings, device=args.device, allow_under_calibrated=True, **few)
                    print(f"[{name} {size} {recipe}] training on {n} good images", flush=True)
                    if model_dir.exists():
                        import shutil

                        shutil.rmtree(model_dir)
                    train(images, model_dir, config, progress=False)
                    trained = True
                meta = read_metadata(model_dir)
                report = evaluate(Scorer(model_dir, args.device), dataset, progress=False)
                o, t = report["overall"], meta["training"]
                row = {"dataset": name, "size": size, "images": n, "recipe": recipe, "trained_here": trained,
                       "image_auroc": o["image_auroc"], "pixel_auroc": o["pixel_auroc"], "au_pro": o["au_pro"],
                       # with a global branch, image_auroc is the fused score's; each branch's alone beside it
                       "image_auroc_stpm": o.get("image_auroc_stpm"), "image_auroc_global": o.get("image_auroc_global"),
                       "global_branch": (meta.get("global") or {}).get("skipped", "fitted" if meta.get("global")
                                                                       else "none"),
                       "false_reject_rate": o["false_reject_rate"], "miss_rate": o["miss_rate"],
                       "epochs": len(t["history"]), "best_epoch": t["best_epoch"], "train_s": t["duration_s"],
                       "augmented": bool((t.get("few_shot") or {}).get("augmentation")),
                       "threshold_status": meta["thresholds"]["status"],
                       "seconds": round(time.monotonic() - started, 1), "model_dir": str(model_dir)}
                results.append(row)
                args.out.write_text(json.dumps({"results": results}, indent=2))
                print(_row(row), flush=True)
    print()
    print(_table(results))
    print(f"\nwritten to {args.out}")
    return 0


def _f(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def _row(r: dict) -> str:
    return (f"{r['dataset']:<14}{r['size']:>5}{r['recipe']:>10} {_f(r['image_auroc']):>9}{_f(r['pixel_auroc']):>10}"
            f"{_f(r['au_pro']):>8}{_f(r['false_reject_rate']):>7}{_f(r['miss_rate']):>7}{r['epochs']:>7}"
            f"{r['train_s']:>9.0f}")


def _table(results: list[dict]) -> str:
    head = (f"{'dataset':<14}{'size':>5}{'recipe':>10} {'img AUROC':>9}{'px AUROC':>10}{'AU-PRO':>8}{'FRR':>7}"
            f"{'miss':>7}{'epochs':>7}{'train s':>9}")
    return "\n".join([head, "-" * len(head)] + [_row(r) for r in results])


if __name__ == "__main__":
    sys.exit(main())
