"""`linewatch up`: the one-command run on embedded defaults (Apache Kafka, redis-server, SQLite)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from datasets import data_root

MiB = 1024 * 1024

pytestmark = pytest.mark.services


def _env(state_dir, data=None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
    return {**env, "LINEWATCH_STATE_DIR": str(state_dir), "LINEWATCH_DATA_ROOT": str(data or data_root()), **extra}


def _up(state_dir, *args: str, timeout: int = 900, data=None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "linewatch", "up", "--no-dashboard", *args],
                          env=_env(state_dir, data, **env), capture_output=True, text=True, timeout=timeout)


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{\n"):])


def _small_bottle(folder: Path, every: int = 5) -> Path:
    """A data root whose mvtec_ad/bottle is the real one with every ``every``-th training image (symlinks): the
    default model's training is what is tested, not its quality, and 42 images take a fifth of the time."""
    real = data_root() / "mvtec_ad" / "bottle"
    bottle = folder / "mvtec_ad" / "bottle"
    (bottle / "train" / "good").mkdir(parents=True)
    for image in sorted((real / "train" / "good").glob("*.png"))[::every]:
        (bottle / "train" / "good" / image.name).symlink_to(image)
    for name in ("test", "ground_truth"):
        (bottle / name).symlink_to(real / name, target_is_directory=True)
    return folder


def test_up_trains_the_default_model_once_then_runs_the_line(tmp_path):
    data = _small_bottle(tmp_path / "data")
    first = _up(tmp_path, "--max-frames", "12", "--fps", "0", "--epochs", "1", data=data)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training the default model" in first.stdout
    summary = _summary(first.stdout)
    assert summary["published"] == 12 and summary["inspected"] == 12 and summary["dead_lettered"] == 0
    assert summary["latency_ms"]["p50"] > 0 and len(summary["model_versions"]) == 1
    assert (tmp_path / "models" / "bottle-default" / "model.json").is_file()

    second = _up(tmp_path, "--max-frames", "30", "--fps", "20", "--workers", "2", data=data)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training the default model" not in second.stdout  # cached
    again = _summary(second.stdout)
    assert again["published"] == 30 and again["inspected"] == 30
    assert again["model_versions"] == summary["model_versions"]

    # A camera that cannot open its source stops the run with the camera's own error, not a silent wait. (The
    # worker scores with eager PyTorch: the runtime choice of `auto`, timed at its start, is the runs' above.)
    broken = _up(tmp_path, "--source", str(tmp_path / "nowhere"), "--max-frames", "5", "--no-trainer", timeout=300,
                 data=data, LINEWATCH_DETECTOR__RUNTIME="torch")
    assert broken.returncode == 1
    assert "error: camera exited with code" in broken.stderr and str(tmp_path / "nowhere") in broken.stderr


def test_up_says_where_the_bottle_images_are_expected_before_starting_anything(tmp_path):
    result = _up(tmp_path / "state", data=tmp_path / "empty", timeout=120)
    assert result.returncode == 2
    assert "mvtec_ad/bottle: no such directory" in result.stderr and "LINEWATCH_DATA_ROOT" in result.stderr
    assert not (tmp_path / "state" / "kafka").exists()  # failed before starting the broker


def _topic_configs(bootstrap_servers: str, topics: list[str]) -> dict[str, dict[str, str]]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers)
    try:
        described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
    finally:
        admin.close()
    return {t: {key: entry["value"] for key, entry in c.items()} for t, c in described["topic"].items()}


def _broker_pid(state_dir: Path) -> int | None:
    """The pid of the Java process running the broker of ``state_dir`` (read from /proc)."""
    config = str(state_dir / "kafka" / "server.properties")
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and config in (proc / "cmdline").read_bytes().decode(errors="replace"):
                return int(proc.name)
        except OSError:
            continue
    return None


def _advertised_listener(state_dir: Path) -> str:
    """``host:port`` of the embedded broker of ``state_dir``, from the configuration `up` wrote for it."""
    lines = (state_dir / "kafka" / "server.properties").read_text().splitlines()
    [listener] = [line.split("=", 1)[1] for line in lines if line.startswith("advertised.listeners=")]
    return listener.removeprefix("PLAINTEXT://")


def test_up_creates_the_topics_with_retention_and_stops_with_the_brokers_error_when_it_is_killed(tmp_path,
                                                                                                quick_model):
    # One run for both (each costs a start of `up`): the topics are read from the running broker, then it is killed.
    # A retention set in the environment reaches the topic; the others keep their documented defaults.
    up = subprocess.Popen([sys.executable, "-m", "linewatch", "up", "--no-dashboard", "--no-trainer", "--model",
                           str(quick_model.model_dir), "--fps", "5"],
                          env=_env(tmp_path, LINEWATCH_KAFKA__FRAMES_RETENTION__MS="3600000"),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (tmp_path / "logs" / "camera.log").exists():
            assert up.poll() is None, up.communicate()[1][-3000:]
            time.sleep(0.5)
        time.sleep(5)  # frames flowing
        configs = _topic_configs(_advertised_listener(tmp_path),
                                 ["linewatch.frames", "linewatch.frames.dlq", "linewatch.inspections"])
        pid = _broker_pid(tmp_path)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        stdout, stderr = up.communicate(timeout=120)  # not a frozen count: up ends by itself
    finally:
        if up.poll() is None:
            up.kill()
            up.communicate()
    assert "embedded Apache Kafka on 127.0.0.1:" in stdout and "heap 256 MiB" in stdout
    frames = configs["linewatch.frames"]
    assert frames["retention.ms"] == "3600000" and frames["retention.bytes"] == str(512 * MiB)
    assert frames["segment.bytes"] == str(64 * MiB) and frames["segment.ms"] == "3600000"
    for topic in ("linewatch.frames.dlq", "linewatch.inspections"):
        assert configs[topic]["retention.ms"] == str(7 * 24 * 3600_000), topic
        assert configs[topic]["retention.bytes"] == str(256 * MiB), topic

    assert up.returncode == 1
    assert "error: kafka exited with code -9" in stderr and str(tmp_path / "kafka" / "kafka.log") in stderr
    assert _broker_pid(tmp_path) is None


def test_up_without_the_kafka_jars_names_the_set_up_command(tmp_path):
    # Nothing is downloaded at run time: jars missing from the cache stop `up` with one line, before any training.
    result = _up(tmp_path / "state", timeout=120, XDG_CACHE_HOME=str(tmp_path / "empty-cache"))
    assert result.returncode == 2
    # the one error line, beside the note naming the (new) state folder every command that opens the record prints
    error = [line for line in result.stderr.strip().splitlines() if not line.startswith(("note:", "state folder:"))]
    assert len(error) == 1 and error[0].startswith("error: Apache Kafka ") and "scripts/bootstrap.sh" in error[0]
    assert str(tmp_path / "empty-cache" / "linewatch") in error[0]
    assert "training the default model" not in result.stdout


def _small_tiles(folder: Path) -> Path:
    """A data root's magnetic_tile: 16 training goods, 4 test goods and 2 tiles of each defect type of the real set
    (symlinks, masks beside their tiles), with its own split.json."""
    real = data_root() / "magnetic_tile"
    split = json.loads((real / "split.json").read_text())
    small = {"train_good": split["train_good"][:16], "test_good": split["test_good"][:4],
             "test_defect": {k: v[:2] for k, v in split["test_defect"].items()}}
    tiles = folder / "magnetic_tile"
    for rel in small["train_good"] + small["test_good"] + [p for v in small["test_defect"].values() for p in v]:
        for path in (Path(rel), Path(rel).with_suffix(".png")):
            if (real / path).is_file():
                (tiles / path).parent.mkdir(parents=True, exist_ok=True)
                (tiles / path).symlink_to(real / path)
    (tiles / "split.json").write_text(json.dumps(small))
    return folder


def test_up_runs_two_products_each_frame_scored_by_its_own_model(tmp_path):
    """`linewatch up --products bottle,magnetic_tile`: a camera and a demo model per product; the workers route each
    frame by its product header (issue 18)."""
    data = _small_tiles(_small_bottle(tmp_path / "data", every=10))
    result = _up(tmp_path, "--products", "bottle,magnetic_tile", "--max-frames", "16", "--fps", "0", "--epochs", "1",
                 "--no-trainer", data=data)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training the default model of magnetic_tile" in result.stdout
    summary = _summary(result.stdout)
    assert summary["published"] == 16 and summary["dead_lettered"] == 0
    assert summary["inspected_per_product"] == {"bottle": 8, "magnetic_tile": 8}
    assert summary["model_versions"] == ["bottle/v1", "magnetic_tile/v1"]
    refused = _up(tmp_path, "--products", "bottle,widgets", timeout=120, data=data)
    assert refused.returncode == 2 and "no demo data set for 'widgets'" in refused.stderr
