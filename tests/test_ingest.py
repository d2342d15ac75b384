"""Camera services: video capture, reconnecting a camera that drops, and counting every frame.

The live-stream tests run a real HTTP MJPEG camera (``services/mjpeg.py``) and a real Apache Kafka, and read
back what the camera published: which frame it was (drawn into the image), when the camera stamped it
(``captured_at``) and when the broker appended it (the frames topic's ``LogAppendTime``).
"""

import shutil
import threading
import time

import cv2
import numpy as np
import pytest
from kafka import KafkaConsumer

from linewatch.contracts.kafka import ensure_topics
from linewatch.contracts.settings import Settings
from linewatch.ingest.camera import CameraCounters, CameraService, FrameIds
from linewatch.ingest.sources import Capture, SourceError, VideoCaptureSource, open_source

from datasets import bottle
from services.mjpeg import MjpegCamera, frame_seq


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
    assert counters.reconnects == 1 and camera.opens == 2  # one outage, two attempts
    assert counters.gap_s >= 0.2 + 0.4  # backoff doubled: 0.2 s, then 0.4 s


# ---- live streams and outages (issue 13: a camera never stalls on one frame) ----------------------------------

def _outage_settings(kafka, prefix: str) -> Settings:
    settings = Settings(kafka={"bootstrap_servers": kafka.bootstrap_servers, "topic_prefix": prefix,
                               "frames_partitions": 1},
                        ingest={"reconnect_initial_s": 0.2, "reconnect_max_s": 1.0})
    ensure_topics(settings.kafka)
    return settings


class Running:
    """A camera service run in a thread, as ``linewatch ingest`` runs it."""

    def __init__(self, service: CameraService):
        self.service = service
        self.counters: CameraCounters | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.counters = self.service.run(install_signal_handlers=False)

    def wait_for(self, condition, timeout_s: float) -> float:
        """Seconds until ``condition(counters)`` held; fails after ``timeout_s``."""
        started = time.monotonic()
        while not condition(self.service.counters):
            assert time.monotonic() - started < timeout_s, f"not within {timeout_s} s: {self.service.counters}"
            time.sleep(0.01)
        return time.monotonic() - started

    def finish(self) -> CameraCounters:
        self.service.stop()
        self.thread.join(timeout=60)
        assert self.counters is not None
        return self.counters


def _published(settings: Settings, expected: int) -> list:
    consumer = KafkaConsumer(settings.kafka.frames_topic, bootstrap_servers=settings.kafka.bootstrap_servers,
                             auto_offset_reset="earliest", consumer_timeout_ms=30_000)
    records = []
    for record in consumer:
        records.append(record)
        if len(records) >= expected:
            break
    consumer.close()
    return records


@pytest.mark.services
def test_a_live_stream_read_slower_than_it_sends_gives_the_newest_frame_and_an_outage_counts_once(apache_kafka):
    """10 frames/s MJPEG over HTTP read at --fps 3 for 10 s: every published frame is the newest (age under 1 s,
    captured_at its arrival); the server then stops for 5 s: nothing is captured meanwhile, one outage is
    counted, seen within a second or two, with gap_s about 5 s, and frames resume."""
    settings = _outage_settings(apache_kafka, "mjpeg-drain")
    server = MjpegCamera(fps=10.0)
    server.start()
    try:
        run = Running(CameraService(settings, "cam-mjpeg", "line-1", open_source(server.url), fps=3.0))
        time.sleep(10.0)
        down_at = time.time_ns()
        server.stop()
        seen_s = run.wait_for(lambda c: c.reconnects >= 1, timeout_s=5.0)
        captured_before = run.service.counters.captured
        time.sleep(5.0 - seen_s)
        up_at = time.time_ns()
        server.start()
        run.wait_for(lambda c: c.captured >= captured_before + 6, timeout_s=10.0)
        counters = run.finish()
    finally:
        server.close()

    assert (counters.dropped, counters.failed) == (0, 0)
    assert counters.captured == counters.published + counters.dropped + counters.failed
    assert counters.reconnects == 1 and seen_s < 2.0
    assert 5.0 <= counters.gap_s <= 7.5, counters.gap_s  # last frame before the stop to the first after it
    records = _published(settings, counters.published)
    assert len(records) == counters.published
    frames = []  # (seq, server's send time, captured_at, broker append time), seconds
    for record in records:
        seq = frame_seq(record.value)
        captured_at = int(dict(record.headers)["captured_at"]) / 1e9
        frames.append((seq, server.sent_at_ns[seq] / 1e9, captured_at, record.timestamp / 1e3))
    seqs = [f[0] for f in frames]
    assert seqs == sorted(set(seqs)), "a frame sent twice or out of order"
    before = [f for f in frames if f[2] < down_at / 1e9]
    after = [f for f in frames if f[2] > up_at / 1e9]
    assert 24 <= len(before) <= 31, len(before)  # about 3 frames/s of the 100 sent in 10 s
    assert len(before) + len(after) == len(frames), "a frame captured while the server was down"
    assert len(after) >= 6
    ages = [published - sent for _, sent, _, published in frames]
    stamp_errors = [abs(captured - sent) for _, sent, captured, _ in frames]
    assert max(ages) < 1.0, max(ages)
    assert max(stamp_errors) < 0.5, max(stamp_errors)
    print(f"\n{len(frames)} frames, age median {np.median(ages) * 1e3:.0f} ms max {max(ages) * 1e3:.0f} ms; "
          f"captured_at - sent max {max(stamp_errors) * 1e3:.0f} ms; outage seen after {seen_s:.2f} s, "
          f"gap_s {counters.gap_s:.2f}")


@pytest.mark.services
def test_a_hung_stream_is_seen_down_within_two_seconds_and_counted_once(apache_kafka):
    """The connection stays open but no frame comes (a hung camera) for 5 s: seen after max(2 s, 3 frame
    periods), one outage however many reopen attempts, nothing captured meanwhile."""
    settings = _outage_settings(apache_kafka, "mjpeg-hang")
    server = MjpegCamera(fps=10.0)
    server.start()
    try:
        run = Running(CameraService(settings, "cam-hang", "line-1", open_source(server.url), fps=3.0))
        run.wait_for(lambda c: c.captured >= 6, timeout_s=10.0)
        server.paused.set()
        paused_at = time.monotonic()
        seen_s = run.wait_for(lambda c: c.reconnects >= 1, timeout_s=5.0)
        captured_at_pause = run.service.counters.captured
        time.sleep(max(0.0, paused_at + 5.0 - time.monotonic()))
        assert run.service.counters.captured <= captured_at_pause
        server.paused.clear()
        run.wait_for(lambda c: c.captured >= captured_at_pause + 3, timeout_s=10.0)
        counters = run.finish()
    finally:
        server.close()
    assert 1.9 <= seen_s <= 3.0, seen_s
    assert counters.reconnects == 1
    assert 4.9 <= counters.gap_s <= 7.5, counters.gap_s
    assert counters.captured == counters.published and counters.failed == 0
    print(f"\nhung stream seen down after {seen_s:.2f} s, gap_s {counters.gap_s:.2f}")


@pytest.mark.services
def test_an_image_folder_removed_and_restored_is_one_outage_and_an_unreadable_file_is_dropped(
        apache_kafka, tmp_path):
    settings = _outage_settings(apache_kafka, "folder-outage")
    folder = tmp_path / "cam"
    folder.mkdir()
    for path in sorted((bottle() / "test" / "good").glob("*.png"))[:6]:
        shutil.copy(path, folder / path.name)
    names = sorted(p.name for p in folder.iterdir())
    source = open_source(str(folder))  # lists the six files
    (folder / names[1]).unlink()  # gone between listing and reading
    run = Running(CameraService(settings, "cam-folder", "line-1", source, fps=2.0))
    run.wait_for(lambda c: c.captured >= 3, timeout_s=10.0)
    away = tmp_path / "away"
    folder.rename(away)  # the folder disappears (an unmounted share) for 2 s
    time.sleep(2.0)
    away.rename(folder)
    run.thread.join(timeout=30)
    counters = run.counters
    assert counters is not None
    assert (counters.captured, counters.published, counters.dropped, counters.unreadable, counters.failed) == \
        (6, 5, 1, 1, 0)
    assert counters.reconnects == 1
    assert 1.9 <= counters.gap_s <= 3.5, counters.gap_s
    published = [dict(r.headers)["part_id"].decode() for r in _published(settings, 5)]
    assert published == [names[0]] + names[2:]  # none lost to the outage, in order
    print(f"\nfolder outage: gap_s {counters.gap_s:.2f}, {counters}")


def test_a_folder_glob_picks_its_files_and_is_refused_for_another_source(tmp_path):
    """``ingest --glob '*.jpg'`` replays only the folder's files matching it (the Magnetic Tile folders hold masks
    beside the tiles); with a source that is not a folder it is an error, not silently ignored."""
    (tmp_path / "a.jpg").write_bytes((bottle() / "test" / "good" / "000.png").read_bytes())
    (tmp_path / "a.png").write_bytes((bottle() / "test" / "good" / "000.png").read_bytes())
    assert [p.name for p in open_source(str(tmp_path), glob="*.jpg").files] == ["a.jpg"]
    with pytest.raises(SourceError, match="no images named"):
        open_source(str(tmp_path), glob="*.bmp")
    with pytest.raises(SourceError, match="is not one"):
        open_source(str(tmp_path / "a.png"), glob="*.jpg")
