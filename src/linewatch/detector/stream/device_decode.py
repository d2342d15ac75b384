"""JPEG frames decoded and resized on the scoring device (nvJPEG through torchvision.io on CUDA).

Used by the workers on CUDA, where decoding on the CPU would feed the GPU too slowly. Frames are
first checked on the CPU exactly like any other (:func:`linewatch.detector.imaging.probe_image`: headers,
pixel limit, truncation); anything the device decoder cannot take goes back to the CPU path, which
dead-letters it with its reason. Resizing uses area averaging when shrinking and bilinear when
enlarging, like the CPU path (values may differ by rounding, not by method).

torchvision 0.29 deprecates its image decoders in favour of TorchCodec; when they go, this module is
the one place to port (the warning is silenced here, not hidden elsewhere).
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg

from .batches import PREVIEW_SIDE

log = logging.getLogger(__name__)
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


def resize_on_device(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """uint8 (3, H, W) -> uint8 (3, height, width); area averaging when shrinking, bilinear when enlarging."""
    x = image[None].float()
    if height * width < image.shape[-2] * image.shape[-1]:
        x = F.interpolate(x, size=(height, width), mode="area")
    else:
        x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
    return x.round_().clamp_(0, 255)[0].to(torch.uint8)


def decode_jpegs(data: list[bytes], size: int, device: torch.device
                 ) -> list[tuple[torch.Tensor, np.ndarray, int, int] | None]:
    """Decode JPEG frames on ``device`` -> per frame (model input uint8 (3, size, size) on ``device``,
    preview uint8 (h, w, 3) RGB on the CPU, original width, original height), or None where the device
    decoder failed (the caller decodes that frame on the CPU instead)."""
    if not data:
        return []
    tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in data]
    try:
        images = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    except RuntimeError as exc:  # one bad frame fails the whole batch call: retry one by one
        log.debug("batch JPEG decode failed (%s); decoding frames one by one", exc)
        images = []
        for t in tensors:
            try:
                images.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
            except RuntimeError:
                images.append(None)
    out: list[tuple[torch.Tensor, np.ndarray, int, int] | None] = []
    for img in images:
        if img is None:
            out.append(None)
            continue
        h, w = int(img.shape[-2]), int(img.shape[-1])
        scale = min(1.0, PREVIEW_SIDE / max(h, w))
        preview = resize_on_device(img, max(1, round(h * scale)), max(1, round(w * scale)))
        out.append((resize_on_device(img, size, size), preview.permute(1, 2, 0).cpu().numpy(), w, h))
    return out
