"""Drive the real pipeline in tests: detector workers as ``linewatch detect`` processes, a camera in-process,
and readers for what landed in SQL, Redis and Kafka."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.kafka import ensure_topics
from linewatch.contracts.live_state import LiveStateReader
from linewatch.contracts.messages import FRAME_SCHEMA, FrameMeta
from linewatch.contracts.schema import Inspection
from linewatch.contracts.settings import Settings
from linewatch.ingest.camera import CameraCounters, CameraService
from linewatch.ingest.sources import ImageFolderSource


class Pipeline:
    """One test's pipeline: its own topic prefix and consumer group, a fresh SQL schema and Redis db."""

    def __init__(self, bootstrap: str, redis_url: str, database_url: str, state_dir: Path, model_dir: Path,
                 **settings_env: str):
        self.model_dir = model_dir
        self.prefix = f"t{uuid.uuid4().hex[:8]}"
        self.env = {
            "LINEWATCH_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
            "LINEWATCH_KAFKA__TOPIC_PREFIX": self.prefix,
            "LINEWATCH_KAFKA__FRAMES_PARTITIONS": "4",
            "LINEWATCH_KAFKA__SESSION_TIMEOUT_MS": "6000",
            "LINEWATCH_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
            "LINEWATCH_REDIS__URL": redis_url,
            "LINEWATCH_DATABASE__URL": database_url,
            "LINEWATCH_STATE_DIR": str(state_dir),
            "LINEWATCH_DETECTOR__GROUP_ID": f"{self.prefix}-detectors",
            "LINEWATCH_DETECTOR__MAX_BATCH": "8",
            "LINEWATCH_DETECTOR__DEVICE": "cpu",
            "LINEWATCH_LOG_FORMAT": "json",
            **settings_env,
        }
        self.settings = Settings(**_nested(self.env))
        self.logs = state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.workers: dict[str, subprocess.Popen] = {}
        self.engine = make_engine(database_url)
        migrate(self.engine)
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM labels"))
            conn.execute(text("DELETE FROM inspections"))
            conn.execute(text("DELETE FROM cameras"))
        self.redis = redis.Redis.from_url(redis_url)
        self.redis.flushdb()
        ensure_topics(self.settings.kafka)

    # ---- processes ----------------------------------------------------------------------------------

    def start_worker(self, name: str, *args: str) -> subprocess.Popen:
        return self.start(name, "detect", "--model", str(self.model_dir), "--threads", "1", *args)

    def start(self, name: str, *args: str) -> subprocess.Popen:
        """Run ``linewatch ARGS`` with this pipeline's settings; its output goes to ``logs/<name>.log``."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "linewatch", *args], env={**os.environ, **self.env},
                                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        self.workers[name] = proc
        return proc

    def wait_for_workers(self, n: int, timeout_s: float = 120.0) -> None:
        """Until ``n`` workers have partitions assigned (heartbeats with partitions)."""
        reader = LiveStateReader(self.redis)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if sum(bool(w.get("partitions")) for w in reader.workers() if w["alive"]) >= n:
                return
            for name, proc in self.workers.items():
                if proc.poll() is not None and name.startswith("w"):
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{self.log_tail(name)}")
            time.sleep(0.5)
        raise AssertionError(f"{n} workers did not get partitions in {timeout_s} s:\n" +
                             "\n".join(self.log_tail(n) for n in self.workers))

    def stop_workers(self, timeout_s: float = 60.0) -> dict[str, int]:
        """SIGTERM every running worker and return their exit codes."""
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return {name: proc.wait(timeout_s) for name, proc in self.workers.items()}

    def kill(self) -> None:
        for proc in self.workers.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # ---- input --------------------------------------------------------------------------------------

    def camera(self, folder: Path, fps: float = 0.0, camera_id: str = "cam-1",
               max_frames: int | None = None) -> CameraService:
        return CameraService(self.settings, camera_id, "line-1", ImageFolderSource(folder), fps=fps,
                             max_frames=max_frames)

    def publish_folder(self, folder: Path, **kw) -> CameraCounters:
        return self.camera(folder, **kw).run(install_signal_handlers=False)

    def publish_raw(self, items: list[tuple[bytes | None, list[tuple[str, bytes]]]],
                    camera_id: str = "cam-raw") -> None:
        producer = KafkaProducer(bootstrap_servers=self.settings.kafka.bootstrap_servers, acks="all",
                                 max_request_size=self.settings.kafka.max_message_bytes)
        for value, headers in items:
            producer.send(self.settings.kafka.frames_topic, key=camera_id.encode(), value=value, headers=headers)
        producer.flush(30)
        producer.close()

    # ---- output -------------------------------------------------------------------------------------

    def wait_until(self, predicate, timeout_s: float, what: str, poll_s: float = 0.5):
        """``predicate()``'s first truthy value within ``timeout_s``; else an AssertionError naming ``what``
        with the workers' log tails."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(poll_s)
        raise AssertionError(f"timed out waiting for {what}:\n" + "\n".join(self.log_tail(n, 20) for n in self.workers))

    def rows(self) -> list:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.scalars(select(Inspection).order_by(Inspection.id)))

    def row_count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM inspections")).scalar_one())

    def wait_for_rows(self, n: int, timeout_s: float = 240.0) -> int:
        deadline = time.monotonic() + timeout_s
        count = 0
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):  # the database may be the service a test has stopped
                count = self.row_count()
            if count >= n:
                return count
            time.sleep(0.5)
        raise AssertionError(f"only {count} of {n} inspections stored in {timeout_s} s:\n" +
                             "\n".join(self.log_tail(w) for w in self.workers))

    def redis_totals(self, camera_id: str = "cam-1"):
        reader = LiveStateReader(self.redis)
        now = dt.datetime.now(dt.UTC)
        return reader.totals("camera", camera_id, now - dt.timedelta(hours=1), now + dt.timedelta(minutes=1))

    def wait_for_no_lag(self, timeout_s: float = 60.0) -> int:
        """The group's lag on the frames topic (end offsets minus committed), once 0 or after ``timeout_s``."""
        topic = self.settings.kafka.frames_topic
        partitions = [TopicPartition(topic, i) for i in range(self.settings.kafka.frames_partitions)]
        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka.bootstrap_servers)
        reader = KafkaConsumer(bootstrap_servers=self.settings.kafka.bootstrap_servers)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                ends = reader.end_offsets(partitions)
                group = self.settings.detector.group_id
                committed = admin.list_group_offsets({group: partitions})[group]
                lag = sum(ends[tp] - (committed[tp].offset if tp in committed and committed[tp].offset >= 0 else 0)
                          for tp in partitions)
                if lag == 0 or time.monotonic() > deadline:
                    return lag
                time.sleep(1)
        finally:
            admin.close()
            reader.close()

    def consume(self, topic: str, n: int, timeout_s: float = 60.0) -> list:
        consumer = KafkaConsumer(topic, bootstrap_servers=self.settings.kafka.bootstrap_servers,
                                 auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=1000,
                                 max_partition_fetch_bytes=self.settings.kafka.max_message_bytes + 65536)
        out: list = []
        deadline = time.monotonic() + timeout_s
        try:
            while len(out) < n and time.monotonic() < deadline:
                out.extend(consumer)
        finally:
            consumer.close()
        return out

    def close(self) -> None:
        self.kill()
        self.engine.dispose()
        self.redis.close()


# kafka-python 3.0's network layer logs this ERROR, with the traceback of a recv on the socket it closed itself,
# when a consumer leaves its group at a worker's stop (seen once in CI: "<KafkaTCPTransport [none] (closed)>: Error
# receiving network data closing socket", AttributeError on the closed socket): the library's race, not the service's.
_LIBRARY_CLOSE_RACE = ('"logger": "kafka.net.transport"', "Error receiving network data closing socket")


def service_tracebacks(log: str) -> list[str]:
    """The lines of a service's log that carry a traceback, kafka-python's closed-socket record above left out."""
    return [line for line in log.splitlines()
            if "Traceback" in line and not all(part in line for part in _LIBRARY_CLOSE_RACE)]


def raw_headers(camera_id: str, line_id: str, frame_id: int, captured_ns: int | None = None,
             part_id: str | None = None, content_type: str = "image/jpeg") -> list[tuple[str, bytes]]:
    """Frame headers written by hand (any values, valid or not), as a camera's producer would send them."""
    values = {"schema": FRAME_SCHEMA, "camera_id": camera_id, "line_id": line_id, "frame_id": str(frame_id),
              "captured_at": str(captured_ns or time.time_ns()), "content_type": content_type}
    if part_id is not None:
        values["part_id"] = part_id
    return [(k, v.encode()) for k, v in values.items()]


def other_model(model_dir: Path, out: Path) -> Path:
    """A second, different model made from ``model_dir`` in a moment: the same student with its weights scaled
    by 1.01 and the image threshold moved by 1 %."""
    from safetensors.torch import load_file

    from linewatch.detector.model_files import WEIGHTS_FILE, read_metadata, save_model

    meta = read_metadata(model_dir)
    state = {k: v * 1.01 if v.is_floating_point() else v for k, v in load_file(str(model_dir / WEIGHTS_FILE)).items()}
    meta["thresholds"] = {**meta["thresholds"], "image": meta["thresholds"]["image"] * 1.01}
    return save_model(out, state, meta)


def frame_headers(frame_id: int, camera_id: str = "cam-raw", content_type: str = "image/png") -> list:
    return FrameMeta(camera_id, "line-1", frame_id, time.time_ns(), content_type).headers()


def _nested(env: dict[str, str]) -> dict:
    """``LINEWATCH_A__B=v`` -> ``{"a": {"b": "v"}}`` (so tests build the same Settings the workers read)."""
    out: dict = {}
    for key, value in env.items():
        parts = key.removeprefix("LINEWATCH_").lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out
