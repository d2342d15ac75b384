"""Kept frames for operator review and retraining: the pixels the model scored and a heatmap overlay, on disk.

The image is the frame's original bytes when they are a JPEG or an 8-bit RGB/gray PNG that decodes to exactly the
scored pixels, else a lossless PNG of the decoded RGB (alpha ignored, gray expanded:
:func:`..imaging.scored_pixels_file`).

Layout: ``<root>/<line_id>/<camera_id>/<YYYY-MM-DD>/<frame_id>.<jpg|png>`` and ``<frame_id>.heatmap.jpg``.
Rewriting a frame (a redelivery) writes the same bytes to the same paths. URIs are ``file://`` URIs.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from linewatch.contracts.files import uri_of
from linewatch.contracts.messages import FrameMeta

from ..imaging import DEFAULT_MAX_PIXELS, scored_pixels_file

_KEEP = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
MAX_NAME_BYTES = 200  # file systems allow 255 per path component; room for a hash suffix


def safe_name(text: str) -> str:
    """A path component for an id: letters, digits, '.', '_' and '-' kept, every other character (and a
    leading '.') percent-encoded as UTF-8, so distinct ids never share a folder (``press/1`` -> ``press%2F1``,
    ``press:1`` -> ``press%3A1``) and no id names ``.``, ``..`` or a hidden file. A name longer than
    ``MAX_NAME_BYTES`` is cut and ends with ``~`` and a BLAKE2b hash of the whole id (``~`` never appears
    otherwise: it is encoded)."""
    name = "".join(c if c in _KEEP and not (i == 0 and c == ".") else
                   "".join(f"%{b:02X}" for b in c.encode()) for i, c in enumerate(text))
    if len(name) > MAX_NAME_BYTES:
        digest = hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
        name = f"{name[:MAX_NAME_BYTES - 17]}~{digest}"
    return name or "%"


def keep_good_sample(camera_id: str, frame_id: int, rate: float) -> bool:
    """Whether a good frame is sampled for review: a hash of its identity, so a redelivery decides alike."""
    if rate <= 0:
        return False
    digest = hashlib.blake2b(f"{camera_id}:{frame_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


class ImageStore:
    """A directory of kept frames."""

    def __init__(self, root: Path, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.root = Path(root).resolve()
        self.max_pixels = max_pixels  # the workers' ``detector.max_pixels``: a frame they scored re-encodes here

    def folder(self, meta: FrameMeta) -> Path:
        day = meta.captured_at.strftime("%Y-%m-%d")
        return self.root / safe_name(meta.line_id) / safe_name(meta.camera_id) / day

    def keep(self, meta: FrameMeta, original: bytes, overlay_jpeg: bytes) -> tuple[str, str]:
        """Write the scored pixels of a frame (its ``original`` bytes, or their PNG re-encoding; see the module
        docstring) and its overlay; returns (image URI, heatmap URI).

        Raises:
            OSError: the disk refused (full, read-only ...); callers retry.
            ImageError: ``original`` does not decode (a frame that was scored always does).
        """
        data, suffix = scored_pixels_file(original, f"frame {meta.camera_id}/{meta.frame_id}", self.max_pixels)
        folder = self.folder(meta)
        folder.mkdir(parents=True, exist_ok=True)
        image = folder / f"{meta.frame_id}{suffix}"
        heatmap = folder / f"{meta.frame_id}.heatmap.jpg"
        _write_atomic(image, data)
        try:
            _write_atomic(heatmap, overlay_jpeg)
        except OSError:
            image.unlink(missing_ok=True)  # no URI will name it: it would lie on the full disk for good
            raise
        return uri_of(image), uri_of(heatmap)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it into place; a failed write (disk full) leaves no partial file.

    Raises:
        OSError: the disk refused the write.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
