"""Where the real images are: ``LINEWATCH_DATA_ROOT`` or ``../shared/data`` beside the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    root = Path(os.environ.get("LINEWATCH_DATA_ROOT", REPO / ".." / "shared" / "data")).resolve()
    if not (root / "mvtec_ad" / "bottle").is_dir():
        pytest.fail(f"real test images not found under {root}: set LINEWATCH_DATA_ROOT", pytrace=False)
    return root


def bottle() -> Path:
    return data_root() / "mvtec_ad" / "bottle"


def magnetic_tile() -> Path:
    return data_root() / "magnetic_tile"
