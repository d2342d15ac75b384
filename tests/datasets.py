"""Where the real images and the field cases are: ``LINEWATCH_DATA_ROOT`` or ``../shared/data``, and
``LINEWATCH_CASES_ROOT`` or ``../shared/cases``, beside the repository."""

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


def field_case(name: str) -> Path:
    """A folder of ``../shared/cases`` (failure cases from the field; ``LINEWATCH_CASES_ROOT`` moves it)."""
    root = Path(os.environ.get("LINEWATCH_CASES_ROOT", REPO / ".." / "shared" / "cases")).resolve()
    folder = root / name
    if not folder.is_dir():
        pytest.fail(f"field case {name} not found under {root}: set LINEWATCH_CASES_ROOT", pytrace=False)
    return folder
