"""What the global branch costs at scoring time: the same model scored with and without it, turn by turn.

    python bench/global_overhead.py --model MODEL_DIR [--batch 8] [--repeats 15] [--images N]

The model must have a global branch (``linewatch fit-global``). Each turn scores the same frames (real bottle test
images, or ``--data`` images) through :meth:`Scorer.score_frames` (eager PyTorch, CPU, float32) once with the
branch and once with it detached (``stpm.global_branch = None``: STPM alone, exactly the scoring of a model without
it), alternating which goes first, so a load that comes and goes on a shared machine weighs on both alike. Prints
the median seconds per frame of each and the overhead in percent; writes ``bench/results/global_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="folder of images (default: bottle test images)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "global_overhead.json")
    args = parser.parse_args()

    from linewatch.contracts.settings import Settings
    from linewatch.detector.imaging import read_image
    from linewatch.detector.runtimes.threads import apply_torch_threads, intra_op_threads
    from linewatch.detector.scoring import Scorer

    threads = apply_torch_threads(intra_op_threads())
    scorer = Scorer(args.model, "cpu", precision="float32", runtime="torch")
    branch = scorer.model.stpm.global_branch
    if branch is None:
        raise SystemExit(f"{args.model} has no global branch: run `linewatch fit-global --model {args.model}`")
    folder = args.data or Path(os.environ.get("LINEWATCH_DATA_ROOT", Settings().data_root)) / "mvtec_ad/bottle/test"
    paths = sorted(p for p in folder.rglob("*.png"))[:: max(1, len(list(folder.rglob("*.png"))) // args.batch)]
    frames = [scorer.prepare(read_image(p)) for p in paths[: args.batch]]

    def run(with_branch: bool) -> float:
        scorer.model.stpm.global_branch = branch if with_branch else None
        t0 = time.perf_counter()
        scorer.score_frames(frames)
        return time.perf_counter() - t0

    for flag in (True, False):  # warm-up
        run(flag)
    times: dict[bool, list[float]] = {True: [], False: []}
    for turn in range(args.repeats):
        for flag in ((True, False) if turn % 2 else (False, True)):
            times[flag].append(run(flag))
    scorer.model.stpm.global_branch = branch
    with_s, without_s = (statistics.median(times[f]) / len(frames) for f in (True, False))
    overhead = 100 * (with_s / without_s - 1)
    result = {"model": str(args.model), "frames": len(frames), "windows": sum(len(f.plan.windows) for f in frames),
              "threads": threads, "repeats": args.repeats, "stpm_s_per_frame": without_s,
              "fused_s_per_frame": with_s, "overhead_percent": overhead, "dim": branch.dim}
    print(f"{len(frames)} frames, {threads} threads, median of {args.repeats} turns: STPM alone "
          f"{1000 * without_s:.1f} ms/frame, with the global branch {1000 * with_s:.1f} ms/frame: "
          f"{overhead:+.1f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
