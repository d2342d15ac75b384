"""Where frames come from: a USB camera, an RTSP/HTTP stream, a video file, or a folder of images.

Camera and stream frames are captured with OpenCV and encoded as JPEG; image files are passed on
byte for byte (no re-encoding, so what is inspected is exactly what was stored).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2

from linewatch.contracts.files import CONTENT_TYPE_OF_SUFFIX, IMAGE_SUFFIXES


class SourceError(RuntimeError):
    """The source cannot be opened or read (a camera unplugged, a stream down); the service reconnects."""


@dataclass
class Capture:
    """One captured frame: encoded bytes, their content type, and optionally a part id (e.g. a file name)."""

    data: bytes
    content_type: str
    part_id: str | None = None


class ImageFolderSource:
    """Replays the images under a folder (recursively, sorted by path), optionally looping."""

    live = False

    def __init__(self, folder: Path, loop: bool = False, files: list[Path] | None = None):
        self.folder = Path(folder)
        self.files = files or sorted(
            p for p in self.folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise SourceError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
        self.loop = loop
        self.index = 0

    def open(self) -> None:
        pass

    def read(self) -> Capture | None:
        """The next image, or None when the folder is exhausted (and not looping)."""
        if self.index >= len(self.files):
            if not self.loop:
                return None
            self.index = 0
        path = self.files[self.index]
        self.index += 1
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SourceError(f"{path}: {exc}") from exc
        content_type = CONTENT_TYPE_OF_SUFFIX.get(path.suffix.lower(), "application/octet-stream")
        return Capture(data, content_type, str(path.relative_to(self.folder)))

    def close(self) -> None:
        pass


class VideoCaptureSource:
    """A USB camera (device index), an RTSP/HTTP URL or a video file, read with OpenCV and JPEG-encoded."""

    def __init__(self, spec: str | int, jpeg_quality: int = 92, loop: bool = False):
        self.spec = spec
        self.jpeg_quality = jpeg_quality
        self.loop = loop
        self.live = not (isinstance(spec, str) and Path(spec).is_file())
        self.cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        """(Re)open the device or stream. Raises SourceError when it cannot be opened."""
        self.close()
        cap = cv2.VideoCapture(self.spec)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open video source {self.spec!r}")
        self.cap = cap

    def read(self) -> Capture | None:
        """The next frame as JPEG; None at the end of a video file. Raises SourceError when a live source fails."""
        if self.cap is None:
            self.open()
        ok, frame = self.cap.read()  # type: ignore[union-attr]
        if not ok:
            if self.live:
                raise SourceError(f"video source {self.spec!r} returned no frame (disconnected?)")
            if not self.loop:
                return None
            self.open()
            ok, frame = self.cap.read()  # type: ignore[union-attr]
            if not ok:
                return None
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise SourceError(f"could not encode a frame of {self.spec!r} as JPEG")
        return Capture(jpeg.tobytes(), "image/jpeg")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


def open_source(spec: str, loop: bool = False, jpeg_quality: int = 92) -> ImageFolderSource | VideoCaptureSource:
    """Interpret SOURCE: a device index (``0``), a URL (``rtsp://``, ``http(s)://``), a folder or a video file.

    Raises:
        SourceError: a path that does not exist.
    """
    if spec.isdigit():
        return VideoCaptureSource(int(spec), jpeg_quality)
    if spec.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https", "rtmp"):
        return VideoCaptureSource(spec, jpeg_quality)
    path = Path(spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(path, loop)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFolderSource(path.parent, loop, files=[path])
        return VideoCaptureSource(str(path), jpeg_quality, loop)
    raise SourceError(f"source {spec!r} is not a device index, a URL, a folder or a file")
