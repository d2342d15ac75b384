"""Where the real images and the field cases are: ``LINEWATCH_DATA_ROOT`` or ``../shared/data``, and
``LINEWATCH_CASES_ROOT`` or ``../shared/cases``, beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The quick recipe of the c09 model (conftest's ``c09_train40``): about 10 s on 2 cores; half of train40 held out
# so that 20 held-out goods stand behind a 5% false-reject target (20 x 0.05 = 1, and 20 is the minimum here).
# Without the global branch: c09 and c10 measure STPM's threshold rule and its train/serve parity on their own.
C09_CONFIG = dict(image_size=128, epochs=8, batch_size=4, seed=0, device="cpu", map_smoothing_sigma=2.0,
                  val_fraction=0.5, target_false_reject_rate=0.05, min_held_out_goods=20, global_branch=False)
# The c09 train40 model (conftest's ``c09_train40``) at the product's default 1% false-reject target. The case expects
# none of 20 fresh goods (``heldout20``) rejected: at a 5% target one is to be expected (20 x 0.05), and on some CPUs
# (whose float rounding trains other weights) one was. At 1%, 20 held-out goods are fewer than the 100 the target
# needs: the tolerance bound extrapolates past them, and the model is published marked under-calibrated.
C09_TRAIN40_CONFIG = {**C09_CONFIG, "target_false_reject_rate": 0.01, "allow_under_calibrated": True}


def data_root() -> Path:
    root = Path(os.environ.get("LINEWATCH_DATA_ROOT", REPO / ".." / "shared" / "data")).resolve()
    if not (root / "mvtec_ad" / "bottle").is_dir():
        pytest.fail(f"real test images not found under {root}: set LINEWATCH_DATA_ROOT", pytrace=False)
    return root


def bottle() -> Path:
    return data_root() / "mvtec_ad" / "bottle"


def magnetic_tile() -> Path:
    return data_root() / "magnetic_tile"


def field_case(name: str) -> Path:
    """A folder of ``../shared/cases`` (failure cases from the field; ``LINEWATCH_CASES_ROOT`` moves it)."""
    root = Path(os.environ.get("LINEWATCH_CASES_ROOT", REPO / ".." / "shared" / "cases")).resolve()
    folder = root / name
    if not folder.is_dir():
        pytest.fail(f"field case {name} not found under {root}: set LINEWATCH_CASES_ROOT", pytrace=False)
    return folder
