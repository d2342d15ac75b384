"""The cameras ``linewatch up`` starts: one replaying the bottle test images (or ``--source``), or with
``--products``, one per product replaying its shared data set with the product in every frame's header."""

from __future__ import annotations

import math
from pathlib import Path

from linewatch.contracts.products import check_product

from .demo_model import DEMO_PRODUCTS


def check_products(products: list[str]) -> list[str]:
    """``products`` if each is a product ``up`` has a demo data set for. Raises: ValueError, naming the others."""
    for product in products:
        check_product(product)
        if product not in DEMO_PRODUCTS:
            raise ValueError(f"--products: no demo data set for {product!r}; known: {', '.join(DEMO_PRODUCTS)}")
    return products


def missing_data(data_root: Path, products: list[str]) -> list[Path]:
    """The data folders of ``products`` that are not under ``data_root``."""
    return [data_root / DEMO_PRODUCTS[p].data for p in products if not (data_root / DEMO_PRODUCTS[p].data).is_dir()]


def camera_commands(data_root: Path, products: list[str], source: Path | None, camera_id: str, line_id: str,
                    fps: float, max_frames: int | None) -> dict[str, list[str]]:
    """``{process name: linewatch arguments}`` of the cameras; with several products, ``max_frames`` is shared
    between them (each publishes its share, rounded up)."""
    if not products:
        replay = source or (data_root / "mvtec_ad" / "bottle" / "test")
        cameras = {"camera": ["--camera-id", camera_id, "--source", str(replay)]}
    else:
        cameras = {}
        for product in products:
            demo = DEMO_PRODUCTS[product]
            cameras[f"camera-{product}"] = ["--camera-id", f"cam-{product}", "--source", str(data_root / demo.replay),
                                            "--product", product, *(["--glob", demo.glob] if demo.glob else [])]
    share = math.ceil(max_frames / len(cameras)) if max_frames else None
    return {name: ["ingest", *args, "--line-id", line_id, "--fps", str(fps), "--loop",
                   *(["--max-frames", str(share)] if share else [])] for name, args in cameras.items()}
