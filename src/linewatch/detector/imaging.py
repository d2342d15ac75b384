"""Image decoding and checks shared by training, evaluation and the streaming workers.

Every image that enters the detector comes through :func:`decode_image`: it is checked before it
is decoded (empty, truncated, not an image, too many pixels) and after (bit depth, size), so a
bad file or frame gets an :class:`ImageError` that names it and says why, never a bare traceback.
Grayscale and RGBA images are converted to RGB: gray replicated, alpha ignored (the RGB values under it
are what the model sees); an EXIF orientation tag is applied once, here (the image upright, as viewers show it).
:func:`scored_pixels_file` is what is kept of a frame: exactly those pixels.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import cv2
import numpy as np
import simplejpeg
from PIL import Image, UnidentifiedImageError

from linewatch.contracts.files import IMAGE_SUFFIXES

from .png_chunks import png_metadata, renders_as_stored

MIN_SIDE = 16
DEFAULT_MAX_PIXELS = 40_000_000

cv2.setNumThreads(1)  # decoding runs in many threads of its own; OpenCV's pool would oversubscribe


class ImageError(ValueError):
    """An image that cannot be inspected.

    Attributes:
        reason: a short code (``empty``, ``truncated``, ``corrupt``, ``not_an_image``, ``undecodable``,
            ``too_many_pixels``, ``unsupported_depth``, ``too_small``, ``unreadable``; ``too_many_tiles`` from
            :mod:`.geometry`).
        source: the file path or frame reference it came from.
    """

    def __init__(self, reason: str, source: str, detail: str):
        super().__init__(f"{source}: {detail}")
        self.reason = reason
        self.source = source
        self.detail = detail


def probe_image(data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, int, int]:
    """Read the header only: return (format, width, height) without decoding pixels.

    Raises:
        ImageError: empty, not an image, truncated, or more than ``max_pixels`` pixels
            (a decompression-bomb guard: the check happens before any pixel is decoded).
    """
    if not data:
        raise ImageError("empty", source, "zero-length image data")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, (width, height) = im.format or "unknown", im.size
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", source, f"image too large to decode safely ({exc})") from None
    except UnidentifiedImageError:  # its message names only Pillow's in-memory buffer
        raise ImageError("not_an_image", source, "not a recognised image format") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError("not_an_image", source, f"not a recognised image format ({exc})") from None
    if width * height > max_pixels:
        raise ImageError(
            "too_many_pixels", source, f"{width}x{height} = {width * height} pixels exceeds the limit of {max_pixels}"
        )
    if _is_truncated(fmt, data):
        raise ImageError("truncated", source, f"truncated {fmt} data ({len(data)} bytes, end marker missing)")
    return fmt, width, height


def _is_truncated(fmt: str, data: bytes) -> bool:
    # libjpeg and libpng fill a cut-off image with grey and only warn; the end markers tell.
    if fmt == "JPEG":
        return not data.rstrip(b"\x00").endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" not in data[-16:]
    return False


def decode_image(data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode encoded image bytes (JPEG, PNG, BMP, TIFF, WebP) to RGB.

    JPEG is decoded strictly (libjpeg-turbo through simplejpeg, the same pixels OpenCV gives): where libjpeg
    would only warn and fill the damage with grey or smeared blocks ("Corrupt JPEG data: premature end of data
    segment", bytes lost mid-stream while the file still ends with its end marker), the image is refused as
    ``corrupt``, since its pixels are not what the camera saw.

    Returns:
        uint8 array (H, W, 3), RGB, upright (the EXIF orientation applied). Grayscale is replicated to three
        channels; alpha is dropped.
    Raises:
        ImageError: see :func:`probe_image`; ``corrupt`` JPEG data; undecodable pixel data, 16-bit or float
            images, images smaller than 16 pixels on a side, and channel counts other than 1, 3 or 4.
    """
    fmt, _, _ = probe_image(data, source, max_pixels)
    rgb = _decode_jpeg_strict(data, source) if fmt == "JPEG" else None
    if rgb is None:
        rgb = _decode_any(data, source)
    rgb = upright(rgb, exif_orientation(data))
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ImageError("too_small", source, f"{rgb.shape[1]}x{rgb.shape[0]} is smaller than {MIN_SIDE} px a side")
    return rgb


def exif_orientation(data: bytes) -> int:
    """The EXIF orientation tag (0x0112) of encoded image bytes: 1 (upright) to 8; 1 when there is none or it
    cannot be read. Pillow's ``getexif()`` reading, without its decoding of a PNG's pixels (:func:`png_metadata`)."""
    with contextlib.suppress(Exception):  # any header Pillow cannot read: no orientation to apply
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                # Pillow's PNG getexif() decodes every pixel to reach the chunks that follow them, unless an EXIF
                # came ahead of the pixels (then it reads no further); which doubled a PNG frame's decode time
                metadata = png_metadata(data) if im.format == "PNG" and "exif" not in im.info else None
                if metadata is None:
                    value = im.getexif().get(0x0112, 1)
            if metadata is not None:
                with Image.open(io.BytesIO(metadata)) as im:
                    value = Image.Image.getexif(im).get(0x0112, 1)
            return value if isinstance(value, int) and 1 <= value <= 8 else 1
    return 1


def _kept_as_is(data: bytes, fmt: str) -> bool:
    """Whether encoded bytes decode, in any viewer, to the pixels :func:`decode_image` gives (so they are kept
    byte for byte): a JPEG of 3 or 1 components or a PNG :func:`.png_chunks.renders_as_stored`, either without an
    EXIF orientation other than 1. A JPEG's colour profile is not considered."""
    if exif_orientation(data) != 1:
        return False
    return fmt == "JPEG" or renders_as_stored(data)


def upright(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """``rgb`` (H, W, C) turned upright by an EXIF orientation (1-8, as Pillow's ``ImageOps.exif_transpose``:
    2 mirrored, 3 turned 180°, 4 flipped, 5 transposed, 6 turned 90° clockwise, 7 transversed, 8 turned 90°
    counter-clockwise); a contiguous copy unless ``orientation`` is 1."""
    if orientation == 1:
        return rgb
    turned = {2: rgb[:, ::-1], 3: rgb[::-1, ::-1], 4: rgb[::-1], 5: rgb.transpose(1, 0, 2),
              6: np.rot90(rgb, -1), 7: rgb.transpose(1, 0, 2)[::-1, ::-1], 8: np.rot90(rgb, 1)}.get(orientation, rgb)
    return np.ascontiguousarray(turned)


def _decode_any(data: bytes, source: str) -> np.ndarray:
    """OpenCV's decoder for every format -> uint8 (H, W, 3) RGB (see :func:`decode_image` for the errors)."""
    img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise ImageError("undecodable", source, "image data could not be decoded (corrupt)")
    if img.dtype != np.uint8:
        raise ImageError(
            "unsupported_depth", source, f"{img.dtype} pixels are not supported: convert to 8 bits per channel"
        )
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    channels = img.shape[2]
    if channels == 1:
        return cv2.cvtColor(img[:, :, 0], cv2.COLOR_GRAY2RGB)
    if channels == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    raise ImageError("unsupported_depth", source, f"{channels}-channel images are not supported")


def check_jpeg(data: bytes, source: str = "<bytes>") -> None:
    """Refuse a JPEG whose entropy-coded data is damaged, without keeping its pixels: a strict decode at 1/8
    scale (every scan is still read). Workers that decode JPEGs on the GPU check each frame with this first,
    since the device decoder does not report such damage.

    Raises:
        ImageError: ``corrupt`` (see :func:`decode_image`).
    """
    _decode_jpeg_strict(data, source, min_factor=8)


def _decode_jpeg_strict(data: bytes, source: str, min_factor: int = 1) -> np.ndarray | None:
    """uint8 (H, W, 3) RGB of a JPEG (scaled down by up to ``min_factor``), decoded with every libjpeg warning
    treated as an error; None where simplejpeg cannot take the file at all (a colour space it lacks, say), so
    OpenCV decodes it instead.

    Raises:
        ImageError: ``corrupt`` when libjpeg decodes the file only with warnings about damaged data.
    """
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True, min_factor=min_factor)
    except ValueError as strict_error:
        try:
            simplejpeg.decode_jpeg(data, colorspace="RGB", strict=False, min_factor=min_factor)
        except ValueError:
            return None  # not a warning but an error: not a JPEG simplejpeg handles
        raise ImageError("corrupt", source, f"corrupt JPEG data ({strict_error})") from None


def scored_pixels_file(data: bytes, source: str = "<bytes>", max_pixels: int = DEFAULT_MAX_PIXELS
                       ) -> tuple[bytes, str]:
    """The file to keep for review and training, holding exactly the pixels :func:`decode_image` gives the model
    -> (bytes, suffix ``.jpg`` or ``.png``).

    A JPEG of 3 or 1 components, or an 8-bit RGB or gray PNG without a transparent colour, colour profile, colour
    space other than sRGB or animation, either without an EXIF orientation other than 1, decodes to those pixels in
    any viewer and is kept byte for byte. Anything else (alpha, which the model ignores: it scores the RGB values
    under it; palette, CMYK, an orientation tag, applied by the decoder; a PNG's profile or gamma, applied by a
    browser; other formats) is re-encoded as a lossless PNG of the decoded, upright RGB, so an operator
    never labels an image other than the one inspected.

    Raises:
        ImageError: see :func:`decode_image`.
    """
    with contextlib.suppress(Exception):  # any header Pillow cannot read: the re-encoding below decides
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                fmt, mode = im.format, im.mode
            if fmt in ("JPEG", "PNG") and mode in ("RGB", "L") and _kept_as_is(data, fmt):
                return data, ".jpg" if fmt == "JPEG" else ".png"
    ok, png = cv2.imencode(".png", cv2.cvtColor(decode_image(data, source, max_pixels), cv2.COLOR_RGB2BGR))
    if not ok:
        raise ImageError("undecodable", source, "could not re-encode the decoded pixels as PNG")
    return png.tobytes(), ".png"


def read_image(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read and decode an image file -> uint8 (H, W, 3) RGB.

    Raises:
        ImageError: the file is unreadable or fails :func:`decode_image`; the message names the file.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ImageError("unreadable", str(path), f"cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, str(path), max_pixels)


def read_mask(path: Path, shape: tuple[int, int], threshold: int = 127) -> np.ndarray:
    """Read a ground-truth mask -> bool (H, W), True where defective (value > ``threshold``).

    Raises:
        ImageError: unreadable, or its size differs from the image's ``shape`` (H, W).
    """
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise ImageError("unreadable", str(path), "mask could not be read")
    if mask.shape != tuple(shape):
        raise ImageError("too_small", str(path), f"mask is {mask.shape[::-1]}, image is {tuple(shape)[::-1]}")
    return mask > threshold


def resize_image(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a uint8 (H, W, 3) image to (``height``, ``width``, 3): area interpolation when the result has fewer
    pixels (anti-aliased), bilinear otherwise (OpenCV). Training, evaluation and the workers all resize through
    this (:mod:`.geometry`), so a frame is seen exactly as training images were."""
    h, w = rgb.shape[:2]
    interp = cv2.INTER_AREA if h * w > height * width else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interp)


def to_model_input(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 (H, W, 3) RGB image to a square input -> uint8 (3, size, size), channels first.

    The aspect ratio is not kept (like the authors' ``transforms.Resize([256, 256])``): the ``resize`` input
    geometry, the one of models without an ``input`` field (:mod:`.geometry`, which every scoring path uses).
    """
    return np.ascontiguousarray(resize_image(rgb, size, size).transpose(2, 0, 1))


def resize_map(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize (OpenCV) a float32 (h, w) anomaly map to ``shape`` (H, W) of the original image.

    Returns the same array, not a copy, when it already has that shape.
    """
    if anomaly_map.shape == tuple(shape):
        return anomaly_map
    return cv2.resize(anomaly_map, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name (hidden files and masks' folders excluded)."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
