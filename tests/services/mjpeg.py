"""A live HTTP MJPEG camera for tests: ``multipart/x-mixed-replace`` JPEG frames at a set rate, each frame's
sequence number drawn into it as 16 black/white blocks so a test can tell which frame it got and when it was sent.

The server can be stopped and started again on the same port, as a network camera that drops out does.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import cv2
import numpy as np

BITS = 16
BLOCK = 16  # pixels a side: blocks this size survive JPEG re-encoding at any usual quality
BOUNDARY = b"linewatchframe"


def frame_image(seq: int) -> np.ndarray:
    """A (BLOCK * 2, BLOCK * BITS, 3) uint8 BGR image: bit i of ``seq`` is block i of the top row (white = 1);
    the bottom row is the inverse, so decoding needs no threshold guess."""
    top = np.array([(seq >> i) & 1 for i in range(BITS)], np.uint8) * 255
    rows = np.stack([top, 255 - top])
    return np.repeat(np.repeat(rows, BLOCK, axis=0), BLOCK, axis=1)[..., None].repeat(3, axis=2)


def frame_seq(jpeg: bytes) -> int:
    """The sequence number drawn by :func:`frame_image` into a JPEG frame."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE).astype(np.int32)
    top = image[:BLOCK].reshape(BLOCK, BITS, BLOCK).mean(axis=(0, 2))
    bottom = image[BLOCK:].reshape(BLOCK, BITS, BLOCK).mean(axis=(0, 2))
    return sum(1 << i for i in range(BITS) if top[i] > bottom[i])


class MjpegCamera:
    """Serves ``http://127.0.0.1:<port>/stream.mjpg`` at ``fps`` frames/s while started.

    One clock for every client: frame ``seq`` is due at start + seq / fps; ``sent_at_ns[seq]`` is the wall time
    (``time.time_ns()``) it was first written to a client. Sequence numbers go on across a stop and a start.
    """

    def __init__(self, fps: float = 10.0):
        self.fps = fps
        self.port = _free_port()
        self.sent_at_ns: dict[int, int] = {}
        self.seq = 0
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.paused = threading.Event()  # a hung camera: connections stay open, no frame is sent
        self.server: http.server.ThreadingHTTPServer | None = None
        self.clock = threading.Thread(target=self._tick, daemon=True)
        self.new_frame = threading.Condition(self.lock)
        self.jpeg = b""
        self.closed = threading.Event()
        self.clock.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> None:
        camera = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- http.server's name
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY.decode()}")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                camera._stream(self.wfile)

            def log_message(self, *_args) -> None:
                pass

        http.server.ThreadingHTTPServer.allow_reuse_address = True
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.running.set()
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        """Close the listening socket and every open stream: clients see the connection end."""
        self.running.clear()
        with self.new_frame:
            self.new_frame.notify_all()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def close(self) -> None:
        self.stop()
        self.closed.set()

    def _tick(self) -> None:
        started = time.monotonic()
        n = 0
        while not self.closed.is_set():
            time.sleep(max(0.0, started + n / self.fps - time.monotonic()))
            n += 1
            if not self.running.is_set() or self.paused.is_set():
                continue
            ok, jpeg = cv2.imencode(".jpg", frame_image(self.seq), [cv2.IMWRITE_JPEG_QUALITY, 90])
            assert ok
            with self.new_frame:
                self.jpeg = jpeg.tobytes()
                self.seq += 1
                self.new_frame.notify_all()

    def _stream(self, out) -> None:
        last = self.seq
        while self.running.is_set():
            with self.new_frame:
                while self.seq == last and self.running.is_set():
                    self.new_frame.wait(0.5)
                if not self.running.is_set():
                    return
                last, jpeg = self.seq, self.jpeg
            part = (b"--" + BOUNDARY + b"\r\nContent-Type: image/jpeg\r\nContent-Length: "
                    + str(len(jpeg)).encode() + b"\r\n\r\n" + jpeg + b"\r\n")
            with self.lock:
                self.sent_at_ns.setdefault(last - 1, time.time_ns())
            try:
                out.write(part)
                out.flush()
            except OSError:
                return


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
