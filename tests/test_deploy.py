"""deploy/: the compose file is valid, its services are real linewatch commands, and each one starts with the
compose file's own settings outside a container (hosts pointed at this test's real services)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest
import yaml

from linewatch.cli.embedded import ManagedProcess, free_port
from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.kafka import client_config
from linewatch.contracts.settings import KafkaSettings, Settings

REPO = Path(__file__).resolve().parents[1]
COMPOSE = REPO / "deploy" / "compose.yaml"
INFRASTRUCTURE = {"kafka", "redis", "postgres"}


@pytest.fixture(scope="module")
def compose() -> dict:
    """The compose file as docker-compose itself resolves it (anchors, defaults, profiles)."""
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose not found: run scripts/install-system-deps.sh", pytrace=False)
    out = subprocess.run([binary, "-f", str(COMPOSE), "config"], capture_output=True, text=True, cwd=COMPOSE.parent,
                         env={**os.environ, "COMPOSE_PROJECT_NAME": "linewatch"})
    assert out.returncode == 0, out.stderr
    return yaml.safe_load(out.stdout)


def _linewatch_services(compose: dict) -> dict[str, dict]:
    return {name: svc for name, svc in compose["services"].items() if name not in INFRASTRUCTURE}


def test_compose_declares_the_production_stack(compose):
    services = compose["services"]
    assert {"kafka", "redis", "postgres", "setup", "camera-1", "detector-gpu", "detector-cpu", "trainer",
            "dashboard"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    assert int(services["kafka"]["environment"]["KAFKA_MESSAGE_MAX_BYTES"]) >= 16 * 1024 * 1024
    gpu = services["detector-gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and gpu["capabilities"] == ["gpu"]
    assert services["detector-gpu"]["image"].endswith(":cuda") and services["detector-cpu"]["image"].endswith(":cpu")
    assert {"kafka-data", "redis-data", "postgres-data", "linewatch-data"} <= set(compose["volumes"])
    for name in ("kafka", "redis", "postgres"):
        assert any(str(v).split(":")[0] in compose["volumes"] or "volume" in str(v) for v in services[name]["volumes"])
    for name, svc in _linewatch_services(compose).items():
        assert svc["image"].startswith("linewatch:"), name
        env = svc.get("environment", {})
        assert not [k for k in env if "PASSWORD" in k.upper()], f"{name}: passwords belong in secret files"
        assert {s["target"] for s in svc["secrets"]} == {"database__password", "redis__password"}, name
        if name != "setup":
            assert "healthcheck" in svc, name


def test_images_run_linewatch_as_a_non_root_user():
    dockerfile = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["linewatch"]' in dockerfile
    assert re.search(r"^USER linewatch$", dockerfile, re.M)
    assert "build_classifier('efficientnet_lite0', None)" in dockerfile  # weights present at build time
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'linewatch = "linewatch.cli:run"' in pyproject  # the app, with one-line service errors


def test_every_service_command_is_a_real_linewatch_command(compose):
    for name, svc in _linewatch_services(compose).items():
        command = [c for c in svc["command"]]
        words = [c for c in command if not c.startswith("-")][:1]
        run = subprocess.run([sys.executable, "-m", "linewatch", *words, "--help"], capture_output=True, text=True)
        assert run.returncode == 0, f"{name}: linewatch {words} --help failed:\n{run.stderr}"
        for option in (c for c in command if c.startswith("--")):
            assert option in run.stdout, f"{name}: option {option} unknown to linewatch {words[0]}"


def test_every_compose_setting_is_a_linewatch_setting(compose):
    fields = Settings.model_fields
    for name, svc in _linewatch_services(compose).items():
        for key in svc["environment"]:
            if not key.startswith("LINEWATCH_") or key in ("LINEWATCH_SECRETS_DIR", "LINEWATCH_CONFIG"):
                continue
            parts = key.removeprefix("LINEWATCH_").lower().split("__")
            assert parts[0] in fields, f"{name}: {key} is not a setting"
            if len(parts) == 2:
                assert parts[1] in fields[parts[0]].annotation.model_fields, f"{name}: {key} is not a setting"


def test_kafka_security_settings_reach_the_clients(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    k = KafkaSettings(bootstrap_servers="b1:9093,b2:9093", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="line7", sasl_password="s3cret", ssl_cafile=ca)
    cfg = client_config(k)
    assert cfg == {"bootstrap_servers": ["b1:9093", "b2:9093"], "security_protocol": "SASL_SSL",
                   "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": "line7", "sasl_plain_password": "s3cret",
                   "ssl_check_hostname": True, "ssl_cafile": str(ca)}


def test_the_wheel_holds_every_service_and_the_migrations(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    names = zipfile.ZipFile(next(tmp_path.glob("linewatch-*.whl"))).namelist()
    for required in ("linewatch/contracts/migrations/env.py",
                     "linewatch/contracts/migrations/versions/0001_initial_schema.py",
                     "linewatch/contracts/migrations/script.py.mako"):
        assert required in names, required
    # src layout: every module under src/ is in the wheel at the same path (each service, the CLI, the migrations)
    src = REPO / "src"
    sources = {p.relative_to(src).as_posix() for p in src.rglob("*.py") if "__pycache__" not in p.parts}
    assert sources <= set(names), f"missing from the wheel: {sorted(sources - set(names))}"
    for service in ("cli", "contracts", "ingest", "detector", "dashboard", "trainer"):
        assert f"linewatch/{service}/__init__.py" in names, service


@pytest.mark.services
def test_each_service_starts_with_the_compose_settings(compose, apache_kafka, postgres_server, quick_model, tmp_path):
    """Run each linewatch service's compose command with its compose environment, only the host names pointed
    at this test's Kafka, PostgreSQL and a password-protected Redis, and the secrets in files."""
    redis_password = "compose-test-password"
    port = free_port()
    redis = ManagedProcess("redis-auth", ["redis-server", "--port", str(port), "--save", "", "--requirepass",
                                          redis_password], port, tmp_path / "redis").start()
    engine = make_engine(postgres_server.url)
    migrate(engine)
    with engine.begin() as conn:  # a fresh registry for this deployment
        conn.exec_driver_sql("DELETE FROM training_jobs")
        conn.exec_driver_sql("DELETE FROM models")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "database__password").write_text("linewatch")
    (secrets / "redis__password").write_text(redis_password)
    pg_host = postgres_server.url.split("@", 1)[1].split("/", 1)[0]
    hosts = {"kafka:9092": apache_kafka.bootstrap_servers, "redis:6379": f"127.0.0.1:{redis.port}",
             "postgres:5432": pg_host}
    state = tmp_path / "state"
    procs: dict[str, subprocess.Popen] = {}
    metrics_ports: dict[str, int | None] = {}
    try:
        for name in ("setup", "camera-1", "detector-cpu", "trainer", "dashboard"):
            svc = compose["services"][name]
            env = {k: str(v) for k, v in svc["environment"].items()}
            for key, value in env.items():
                for old, new in hosts.items():
                    value = value.replace(old, new)
                env[key] = value.replace("/var/lib/linewatch", str(state)).replace("/run/secrets", str(secrets))
            env["LINEWATCH_TRAINER__BASE_DATA"] = str(quick_model.model_dir)  # not used before a job runs
            command = [c for c in svc["command"]]
            port = None
            for key in ("LINEWATCH_INGEST__METRICS_PORT", "LINEWATCH_DETECTOR__METRICS_PORT",
                        "LINEWATCH_TRAINER__METRICS_PORT", "LINEWATCH_DASHBOARD__METRICS_PORT"):
                if key in env:
                    port = free_port()
                    env[key] = str(port)
            if name == "dashboard":
                command[command.index("--port") + 1] = str(free_port())
            log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115
            proc = subprocess.Popen([sys.executable, "-m", "linewatch", *command], env={**os.environ, **env},
                                    stdout=log, stderr=subprocess.STDOUT)
            procs[name] = proc
            if name == "setup":
                assert proc.wait(120) == 0, (tmp_path / "setup.log").read_text()
                _register_first_model(env, quick_model.model_dir)
                continue
            metrics_ports[name] = port  # the services start side by side; each is then waited for in turn
        for name, port in metrics_ports.items():
            _wait_http(f"http://127.0.0.1:{port}/readyz", procs[name], tmp_path / f"{name}.log")
            metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            assert "linewatch_" in metrics
            if name == "detector-cpu":
                assert 'linewatch_model_info{version="v1"} 1.0' in metrics
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            proc.wait(60)
        redis.stop()
    assert procs["detector-cpu"].returncode == 0  # a clean stop on SIGTERM


def _register_first_model(env: dict[str, str], model_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "linewatch", "model", "register", str(model_dir), "--activate"],
                         env={**os.environ, **env}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "active" in out.stdout


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{url}: the process exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if urllib.request.urlopen(url, timeout=2).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer in {timeout_s} s:\n{log.read_text()[-3000:]}")
