"""Where frames come from: a USB camera, an RTSP/HTTP stream, a video file, or a folder of images.

Camera and stream frames are captured with OpenCV and encoded as JPEG; image files are passed on
byte for byte (no re-encoding, so what is inspected is exactly what was stored). A live source (a device or a
stream) is drained by a reader thread (:mod:`.live_reader`): :meth:`VideoCaptureSource.read` gives the newest
frame, never one queued earlier, and never the same frame twice.

Two kinds of failure: :class:`SourceError`, the source is away (a stream down, a folder gone), which the camera
counts once as an outage and reconnects; :class:`UnreadableFrame`, one frame cannot be read (a file removed or
unreadable between listing and reading), which the camera counts as dropped and goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2

from linewatch.contracts.files import CONTENT_TYPE_OF_SUFFIX, IMAGE_SUFFIXES

from .live_reader import LatestFrame, SourceDown

OPEN_TIMEOUT_MS = 5000  # a stream that does not answer: the open fails, and the camera tries again with backoff
READ_TIMEOUT_MS = 10000  # bounds how long an abandoned reader of a hung stream holds its connection


class SourceError(RuntimeError):
    """The source cannot be opened or read (a camera unplugged, a stream down, a folder gone); the service
    counts an outage and reconnects."""


class UnreadableFrame(Exception):
    """One frame cannot be read (``part_id`` names it) while its source is there; the service counts it as
    dropped (``unreadable``) and reads the next."""

    def __init__(self, part_id: str, reason: str):
        super().__init__(f"{part_id}: {reason}")
        self.part_id = part_id


@dataclass
class Capture:
    """One captured frame: encoded bytes, their content type, optionally a part id (e.g. a file name), and
    ``taken_at_ns``, the wall time (``time.time_ns()``) the frame arrived from a live source (None: the service
    stamps the time it reads it, as for a file)."""

    data: bytes
    content_type: str
    part_id: str | None = None
    taken_at_ns: int | None = None


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
        """Raises SourceError while the folder is not there (unmounted, removed)."""
        if not self.folder.is_dir():
            raise SourceError(f"image folder {self.folder} is not there")

    def read(self) -> Capture | None:
        """The next image, or None when the folder is exhausted (and not looping).

        Raises:
            SourceError: the folder is gone; the same file is read again once it is back.
            UnreadableFrame: the file cannot be read (removed, no permission) while the folder is there; the
                next call reads the next file.
        """
        if self.index >= len(self.files):
            if not self.loop:
                return None
            self.index = 0
        path = self.files[self.index]
        part_id = str(path.relative_to(self.folder))
        try:
            data = path.read_bytes()
        except OSError as exc:
            if not self.folder.is_dir():
                raise SourceError(f"image folder {self.folder} is not there ({exc})") from exc
            self.index += 1
            raise UnreadableFrame(part_id, str(exc)) from exc
        self.index += 1
        content_type = CONTENT_TYPE_OF_SUFFIX.get(path.suffix.lower(), "application/octet-stream")
        return Capture(data, content_type, part_id)

    def close(self) -> None:
        pass


class VideoCaptureSource:
    """A USB camera (device index), an RTSP/HTTP URL or a video file, read with OpenCV and JPEG-encoded.

    A live one (device or URL) is read continuously by a :class:`~.live_reader.LatestFrame` thread, so that
    :meth:`read` gives the newest frame, stamped with its arrival time, however slowly it is called.
    """

    def __init__(self, spec: str | int, jpeg_quality: int = 92, loop: bool = False):
        self.spec = spec
        self.jpeg_quality = jpeg_quality
        self.loop = loop
        self.live = not (isinstance(spec, str) and Path(spec).is_file())
        self.cap: cv2.VideoCapture | None = None  # a video file's
        self.reader: LatestFrame | None = None  # a live source's
        self.taken = 0  # the live reader's number of the last frame read
        self.down: str | None = None  # why the last open failed: read() says so until open() succeeds

    def open(self) -> None:
        """(Re)open the device or stream. Raises SourceError when it cannot be opened (within 5 s for a URL)."""
        self.close()
        if isinstance(self.spec, str) and self.live:  # the timeouts are FFmpeg's; a device backend may refuse them
            cap = cv2.VideoCapture(self.spec, cv2.CAP_ANY, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                                                            cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS])
        else:
            cap = cv2.VideoCapture(self.spec)
        if not cap.isOpened():
            cap.release()
            self.down = f"cannot open video source {self.spec!r}"
            raise SourceError(self.down)
        self.down = None
        if self.live:
            self.reader, self.taken = LatestFrame(cap, str(self.spec)), 0
        else:
            self.cap = cap

    def read(self) -> Capture | None:
        """The next frame as JPEG (a live source's newest, never one given before); None at the end of a video
        file.

        Raises:
            SourceError: a live source cannot be opened, ended, or sent no new frame for max(2 s, 3 of its frame
                periods) (see :attr:`.live_reader.LatestFrame.stall_s`); the camera reconnects.
        """
        if self.live:
            return self._read_live()
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

    def _read_live(self) -> Capture:
        if self.down is not None:  # reopening is the camera's, with its backoff
            raise SourceError(self.down)
        if self.reader is None:
            self.open()
        try:
            self.taken, frame, taken_at_ns = self.reader.take(self.taken)  # type: ignore[union-attr]
        except SourceDown as exc:
            raise SourceError(str(exc)) from exc
        ok, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise SourceError(f"could not encode a frame of {self.spec!r} as JPEG")
        return Capture(jpeg.tobytes(), "image/jpeg", taken_at_ns=taken_at_ns)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None
        if self.reader is not None:  # it releases its capture itself, once its current read returns
            self.reader.stop()
            self.reader = None


def open_source(spec: str, loop: bool = False, jpeg_quality: int = 92, glob: str | None = None
                ) -> ImageFolderSource | VideoCaptureSource:
    """Interpret SOURCE: a device index (``0``), a URL (``rtsp://``, ``http(s)://``), a folder or a video file.
    ``glob``: of a folder, replay only the images whose file name matches it (``*.jpg``).

    Raises:
        SourceError: a path that does not exist; a folder with no image matching ``glob``; ``glob`` with a source
            that is not a folder.
    """
    if glob and not Path(spec).expanduser().is_dir():
        raise SourceError(f"--glob {glob!r} picks files of an image folder; source {spec!r} is not one")
    if spec.isdigit():
        return VideoCaptureSource(int(spec), jpeg_quality)
    if spec.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https", "rtmp"):
        return VideoCaptureSource(spec, jpeg_quality)
    path = Path(spec).expanduser()
    if path.is_dir():
        if glob:
            files = sorted(p for p in path.rglob(glob) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise SourceError(f"{path}: no images named {glob}")
            return ImageFolderSource(path, loop, files=files)
        return ImageFolderSource(path, loop)
    if path.is_file():
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return ImageFolderSource(path.parent, loop, files=[path])
        return VideoCaptureSource(str(path), jpeg_quality, loop)
    raise SourceError(f"source {spec!r} is not a device index, a URL, a folder or a file")
