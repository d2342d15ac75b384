"""Rollout of a version whose files are not complete (field case c27), with a real worker, Kafka, Redis and
PostgreSQL: the worker keeps scoring with its model, says "on v1, registry says v2", and switches once the files
are whole."""

from __future__ import annotations

import time

import pytest

from linewatch.contracts.live_state import LiveStateReader
from linewatch.detector.model_files import WEIGHTS_FILE
from linewatch.detector.stream.rollout import RETRY_MAX_S
from linewatch.trainer.registry import ModelRegistry, artifact_path

from datasets import bottle
from pipeline_harness import Pipeline, other_model, service_tracebacks

pytestmark = pytest.mark.services


@pytest.fixture
def line(apache_kafka, redis_url, postgres_server, tmp_path, quick_model):
    p = Pipeline(apache_kafka.bootstrap_servers, redis_url, postgres_server.url, tmp_path / "state",
                 quick_model.model_dir)
    p.registry = ModelRegistry(p.engine, p.settings.artifact_store_root, p.settings.kafka)
    with p.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM training_jobs")
        conn.exec_driver_sql("DELETE FROM models")
    yield p
    p.close()


def _heartbeat(p: Pipeline) -> dict:
    (worker,) = [w for w in LiveStateReader(p.redis).workers() if w["alive"]]
    return worker


def test_c27_a_worker_keeps_its_model_until_the_new_files_are_whole(line, tmp_path):
    p = line
    assert p.registry.use(p.model_dir, "test").version == "v1"
    v2 = p.registry.register(other_model(p.model_dir, tmp_path / "model-b"), notes="test")
    weights = artifact_path(v2) / WEIGHTS_FILE
    full = weights.read_bytes()
    weights.write_bytes(full[: len(full) // 2])  # the copy to the artifact store is only half done
    p.start_worker("w1")
    p.wait_for_workers(1)
    assert _heartbeat(p)["model_version"] == "v1"

    p.registry.activate("v2", "test")
    beat = p.wait_until(lambda: (w := _heartbeat(p)).get("model_load_error") and w, 30,
                        "the failed load in the heartbeat", poll_s=0.2)
    assert (beat["model_version"], beat["registry_version"]) == ("v1", "v2")
    assert beat["model_behind"] == "on v1, registry says v2"
    assert beat["model_load_error"].startswith("v2: ") and "does not match the SHA-256" in beat["model_load_error"]

    # scoring goes on, with v1
    p.publish_folder(bottle() / "test" / "good", max_frames=8)
    p.wait_for_rows(8, timeout_s=120)
    assert {r.model_version for r in p.rows()} == {"v1"}
    assert p.workers["w1"].poll() is None

    time.sleep(1.0)
    with open(weights, "ab") as fh:  # the copy completes
        fh.write(full[len(full) // 2:])
    completed = time.monotonic()
    p.wait_until(lambda: _heartbeat(p)["model_version"] == "v2", RETRY_MAX_S + 15, "the switch to v2", poll_s=0.2)
    switch_s = time.monotonic() - completed
    print(f"switched to v2 {switch_s:.1f} s after the files were complete")
    beat = _heartbeat(p)
    assert (beat["registry_version"], beat["model_behind"], beat["model_load_error"]) == ("v2", None, None)
    p.publish_folder(bottle() / "test" / "broken_large", camera_id="cam-2", max_frames=8)
    p.wait_for_rows(16, timeout_s=120)
    assert {r.model_version for r in p.rows() if r.camera_id == "cam-2"} == {"v2"}
    log = (p.logs / "w1.log").read_text()
    assert "could not load model v2" in log and service_tracebacks(log) == []
    assert p.stop_workers()["w1"] == 0
