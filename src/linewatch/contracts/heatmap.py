"""The one way linewatch draws an anomaly map over its image (evaluation, workers, dashboard).

Colours are on a fixed scale relative to the pixel threshold, so heatmaps of different frames
compare at a glance: blue is far below the threshold, green-yellow is at it, red is twice it or more.
Regions above the threshold are outlined in white.
"""

from __future__ import annotations

import cv2
import numpy as np

ALPHA = 0.45


def render_overlay(
    rgb: np.ndarray, anomaly_map: np.ndarray, pixel_threshold: float, score: float | None = None
) -> np.ndarray:
    """Blend a colour-mapped anomaly map over an image and outline the regions above threshold.

    Args:
        rgb: uint8 (H, W, 3) RGB image.
        anomaly_map: float (h, w) anomaly map; resized to (H, W) if needed.
        pixel_threshold: map value drawn at the middle of the colour scale and outlined.
        score: optional normalised image score (1.0 = decision boundary), written in the corner.
    Returns:
        uint8 (H, W, 3) RGB overlay.
    Raises:
        ValueError: ``rgb`` is not (H, W, 3) uint8 or ``pixel_threshold`` is not positive.
    """
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) image, got {rgb.dtype} {rgb.shape}")
    if not pixel_threshold > 0:
        raise ValueError(f"pixel_threshold must be positive, got {pixel_threshold}")
    h, w = rgb.shape[:2]
    amap = np.asarray(anomaly_map, dtype=np.float32)
    if amap.shape != (h, w):
        amap = cv2.resize(amap, (w, h), interpolation=cv2.INTER_LINEAR)
    relative = np.clip(amap / pixel_threshold, 0.0, 2.0)
    colours = cv2.applyColorMap((relative * 127.5).astype(np.uint8), cv2.COLORMAP_JET)
    colours = cv2.cvtColor(colours, cv2.COLOR_BGR2RGB)
    out = cv2.addWeighted(rgb, 1.0 - ALPHA, colours, ALPHA, 0.0)
    contours, _ = cv2.findContours((amap > pixel_threshold).astype(np.uint8), cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    thickness = max(1, round(max(h, w) / 300))
    cv2.drawContours(out, contours, -1, (255, 255, 255), thickness)
    if score is not None:
        verdict = "DEFECT" if score > 1.0 else "good"
        scale = max(0.4, max(h, w) / 900)
        text = f"{score:.2f} {verdict}"
        org = (int(8 * scale), int(30 * scale))
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thickness, cv2.LINE_AA)
    return out
