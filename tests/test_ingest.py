"""Camera services: video capture, reconnecting a camera that drops, and counting every frame."""

import time

import cv2
import numpy as np
import pytest

from linewatch.contracts.settings import Settings
from linewatch.ingest.camera import CameraService, FrameIds
from linewatch.ingest.sources import Capture, SourceError, VideoCaptureSource, open_source

from datasets import bottle


def test_video_file_frames_are_captured_as_jpeg(tmp_path):
    video = tmp_path / "line.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (300, 300))
    images = sorted((bottle() / "test" / "good").glob("*.png"))[:5]
    for path in images:
        writer.write(cv2.resize(cv2.imread(str(path)), (300, 300)))
    writer.release()
    source = open_source(str(video), jpeg_quality=90)
    assert isinstance(source, VideoCaptureSource) and not source.live
    frames = []
    while (capture := source.read()) is not None:
        frames.append(capture)
    source.close()
    assert len(frames) == 5 and {f.content_type for f in frames} == {"image/jpeg"}
    first = cv2.imdecode(np.frombuffer(frames[0].data, np.uint8), cv2.IMREAD_COLOR)
    assert first.shape == (300, 300, 3)


def test_folder_replay_passes_files_through_byte_for_byte():
    source = open_source(str(bottle() / "test" / "broken_small"))
    capture = source.read()
    assert capture.data == (bottle() / "test" / "broken_small" / "000.png").read_bytes()
    assert (capture.content_type, capture.part_id) == ("image/png", "000.png")


def test_frame_ids_strictly_increase():
    ids = FrameIds()
    seen = [ids.next() for _ in range(1000)]
    assert all(b > a for a, b in zip(seen, seen[1:], strict=False))
    assert seen[0] >= time.time_ns() // 1000 - 10_000_000


class FlakyCamera:
    """A live camera that drops out twice (as an unplugged USB camera or a stream that stalls does)."""

    live = True

    def __init__(self, frames: list[bytes], failures: int):
        self.frames, self.failures, self.opens = list(frames), failures, 0

    def open(self) -> None:
        self.opens += 1

    def read(self) -> Capture:
        if self.failures:
            self.failures -= 1
            raise SourceError("no frame (camera disconnected)")
        return Capture(self.frames[len(self.frames) % 3], "image/png")

    def close(self) -> None:
        pass


@pytest.mark.services
def test_camera_reconnects_with_backoff_counts_the_gap_and_publishes_every_frame(apache_kafka, tmp_path):
    settings = Settings(kafka={"bootstrap_servers": apache_kafka.bootstrap_servers, "topic_prefix": "ingest-test"},
                        ingest={"reconnect_initial_s": 0.2, "reconnect_max_s": 1.0})
    from linewatch.contracts.kafka import ensure_topics

    ensure_topics(settings.kafka)
    frames = [p.read_bytes() for p in sorted((bottle() / "test" / "good").glob("*.png"))[:3]]
    camera = FlakyCamera(frames, failures=2)
    service = CameraService(settings, "cam-flaky", "line-9", camera, fps=20.0, max_frames=10)
    counters = service.run(install_signal_handlers=False)
    assert (counters.captured, counters.published, counters.dropped, counters.failed) == (10, 10, 0, 0)
    assert counters.reconnects == 2 and camera.opens == 2
    assert counters.gap_s >= 0.2 + 0.4  # backoff doubled: 0.2 s, then 0.4 s
