"""JPEG frames decoded and resized on the scoring device (nvJPEG through torchvision.io on CUDA).

Used by the workers on CUDA, where decoding on the CPU would feed the GPU too slowly. Frames are
first checked on the CPU exactly like any other (:func:`linewatch.detector.imaging.probe_image`: headers,
pixel limit, truncation); anything the device decoder cannot take goes back to the CPU path, which
dead-letters it with its reason. Frames are prepared under the model's input geometry as on the CPU
(:func:`linewatch.detector.geometry.model_inputs`: the same plan, reflection padding, windows); resizing uses area
averaging when shrinking and bilinear when enlarging, like the CPU path (values may differ by rounding, not by
method). A padding wider than the resized frame (which PyTorch cannot reflect) sends the frame to the CPU.

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

from ..geometry import FrameInput, FramePlan, InputGeometry
from ..imaging import ImageError
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


def windows_on_device(image: torch.Tensor, plan: FramePlan) -> torch.Tensor | None:
    """uint8 (3, H, W) on the device -> its model inputs uint8 (T, 3, S, S) under ``plan``, or None when a padding
    is at least as wide as the resized frame (reflection needs more pixels than it pads)."""
    x = resize_on_device(image, *plan.scaled)
    top, bottom, left, right = plan.pads
    if max(top, bottom) >= x.shape[-2] or max(left, right) >= x.shape[-1]:
        return None
    if top or bottom or left or right:  # "reflect" is OpenCV's BORDER_REFLECT_101; integer values stay exact
        x = F.pad(x[None].float(), (left, right, top, bottom), mode="reflect")[0].to(torch.uint8)
    s = plan.geometry.size
    return torch.stack([x[:, y : y + s, c : c + s] for y, c in plan.windows]).contiguous()


def decode_jpegs(data: list[bytes], geometry: InputGeometry, device: torch.device
                 ) -> list[tuple[FrameInput, np.ndarray, int, int] | None]:
    """Decode JPEG frames on ``device`` -> per frame (model inputs under ``geometry``, windows on ``device``,
    preview uint8 (h, w, 3) RGB on the CPU, original width, original height), or None where the device
    decoder failed or cannot prepare the frame (the caller prepares that frame on the CPU instead, which
    dead-letters it if it has to)."""
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
        try:
            plan = geometry.plan(h, w)
        except ImageError:  # too many tiles: the CPU path dead-letters the frame with its reason
            out.append(None)
            continue
        tiles = windows_on_device(img, plan)
        out.append(None if tiles is None else (FrameInput(tiles, plan), preview.permute(1, 2, 0).cpu().numpy(), w, h))
    return out
