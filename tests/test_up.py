"""`linewatch up`: the one-command run on embedded defaults (tansu broker, redis-server, SQLite)."""

import json
import os
import subprocess
import sys

import pytest

from datasets import data_root

pytestmark = pytest.mark.services


def _up(state_dir, *args: str, timeout: int = 900, data=None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LINEWATCH_")}
    env.update(LINEWATCH_STATE_DIR=str(state_dir), LINEWATCH_DATA_ROOT=str(data or data_root()))
    return subprocess.run([sys.executable, "-m", "linewatch", "up", "--no-dashboard", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def _summary(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{\n"):])


def test_up_trains_the_default_model_once_then_runs_the_line(tmp_path):
    first = _up(tmp_path, "--max-frames", "12", "--fps", "0", "--epochs", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training the default model" in first.stdout
    summary = _summary(first.stdout)
    assert summary["published"] == 12 and summary["inspected"] == 12 and summary["dead_lettered"] == 0
    assert summary["latency_ms"]["p50"] > 0 and len(summary["model_versions"]) == 1
    assert (tmp_path / "models" / "bottle-default" / "model.json").is_file()

    second = _up(tmp_path, "--max-frames", "30", "--fps", "20", "--workers", "2")
    assert second.returncode == 0, second.stderr[-3000:]
    assert "training the default model" not in second.stdout  # cached
    again = _summary(second.stdout)
    assert again["published"] == 30 and again["inspected"] == 30
    assert again["model_versions"] == summary["model_versions"]

    # A camera that cannot open its source stops the run with the camera's own error, not a silent wait.
    broken = _up(tmp_path, "--source", str(tmp_path / "nowhere"), "--max-frames", "5", "--no-trainer", timeout=300)
    assert broken.returncode == 1
    assert "error: camera exited with code" in broken.stderr and str(tmp_path / "nowhere") in broken.stderr


def test_up_says_where_the_bottle_images_are_expected_before_starting_anything(tmp_path):
    result = _up(tmp_path / "state", data=tmp_path / "empty", timeout=120)
    assert result.returncode == 2
    assert "mvtec_ad/bottle: no such directory" in result.stderr and "LINEWATCH_DATA_ROOT" in result.stderr
    assert not (tmp_path / "state" / "tansu").exists()  # failed before starting the broker
