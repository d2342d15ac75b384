"""``linewatch up``: the whole system on one machine, on embedded defaults.

Starts what is not configured (a single-node Apache Kafka with bounded heap and retention, a
``redis-server``, a SQLite file in the state directory), a model (trained on the MVTec AD bottle
images when none is given, then cached), N detector workers, the dashboard, and one camera
replaying the bottle test images. Every service runs as its own ``linewatch`` process, exactly as
in production. A console line shows frames/s, defect rate and latency; with ``max_frames`` it stops
after that many inspections and prints a JSON summary. Ctrl-C stops everything cleanly. Every child
is supervised: one that ends on its own (the broker and Redis included) stops the run with its error.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from linewatch.contracts.database import make_engine, migrate
from linewatch.contracts.files import path_of
from linewatch.contracts.kafka import ensure_topics
from linewatch.contracts.live_state import LiveStateReader, connect_settings
from linewatch.contracts.products import DEFAULT_PRODUCT
from linewatch.contracts.settings import Settings
from linewatch.detector.training import TrainingStopped

from .demo_model import default_model_dir, ensure_default_model
from .embedded import EmbeddedServiceError, ManagedProcess, die_with_parent, redis_server
from .embedded_kafka import ApacheKafka
from .up_cameras import camera_commands, check_products, missing_data
from .up_status import last_json, ms, percentiles, run_summary, this_run

log = logging.getLogger(__name__)

@dataclass
class UpOptions:
    """What ``linewatch up`` runs."""

    max_frames: int | None = None
    workers: int = 1
    fps: float = 10.0
    model: Path | None = None
    source: Path | None = None
    camera_id: str = "cam-1"
    line_id: str = "line-1"
    dashboard: bool = True
    dashboard_port: int = 8501
    dashboard_address: str = "127.0.0.1"  # the demo's dashboard is for this machine unless asked
    trainer: bool = True
    epochs: int | None = None
    products: list[str] = field(default_factory=list)  # --products: a demo camera and model per product


@dataclass
class _Children:
    services: list[ManagedProcess | ApacheKafka] = field(default_factory=list)
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)


class ServiceExited(Exception):
    """A service of the run stopped by itself; the message quotes the last line of its log."""

    def __init__(self, name: str, code: int | None, log: Path):
        lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
        last = f": {lines[-1].strip()}" if lines else ""
        super().__init__(f"{name} exited with code {code}{last} (log: {log})")


class Up:
    """One run of the embedded system."""

    def __init__(self, settings: Settings, options: UpOptions):
        self.options = options
        self.settings = settings
        self.state = settings.state_dir.resolve()
        self.logs = self.state / "logs"
        self.children = _Children()
        self.stop_event = threading.Event()  # set by SIGINT/SIGTERM; training and the status loop obey it

    def run(self) -> int:
        o = self.options
        self.logs.mkdir(parents=True, exist_ok=True)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            self._check_inputs()
            env = self._start_infrastructure()
            models = {p: ensure_default_model(self.settings, o.epochs, stop=self.stop_event, product=p)
                      for p in o.products}
            model = o.model or (None if o.products else ensure_default_model(self.settings, o.epochs,
                                                                             stop=self.stop_event))
            self._check_children()  # the broker or Redis may have died during the training
            self.settings = Settings()  # re-read: the environment now points at the embedded services
            migrate(self.settings.database_url)
            ensure_topics(self.settings.kafka)
            detect = ["detect"]  # with products: every worker follows every product's active version
            for product, product_model in models.items():
                active = self._activate(product_model, explicit=False, product=product)
                print(f"active model of {product}: {active.version} ({active.artifact_uri})", flush=True)
            if model is not None:
                active = self._activate(model, explicit=o.model is not None)
                print(f"active model: {active.version} ({active.artifact_uri})", flush=True)
                detect += ["--model", str(path_of(active.artifact_uri))]
            started = dt.datetime.now(dt.UTC)
            # the workers and the trainer split this host's CPUs (detector/runtimes/threads.py)
            env = {**env, "LINEWATCH_DETECTOR__WORKERS_ON_HOST": str(o.workers)}
            for i in range(o.workers):
                self._spawn(f"worker-{i + 1}", detect, env)
            if o.trainer:  # retrains of the demo model are published like it, marked under-calibrated (README)
                self._spawn("trainer", ["trainer"], {"LINEWATCH_TRAINING__ALLOW_UNDER_CALIBRATED": os.environ.get(
                    "LINEWATCH_TRAINING__ALLOW_UNDER_CALIBRATED", "true"), **env})
            self._wait_for_workers(o.workers)
            if o.dashboard:
                self._spawn("dashboard", ["dashboard", "--port", str(o.dashboard_port),
                                          "--address", o.dashboard_address], env)
                print(f"dashboard: http://{_host(o.dashboard_address)}:{o.dashboard_port}", flush=True)
            for name, camera in camera_commands(self.settings.data_root, o.products, o.source, o.camera_id, o.line_id,
                                                o.fps, o.max_frames).items():
                self._spawn(name, camera, env, capture_stdout=True)
            summary = self._watch(started)
        except (EmbeddedServiceError, FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except ServiceExited as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except TrainingStopped as exc:
            print(f"stopped: {exc}", file=sys.stderr)
            return 130
        finally:
            self._stop_all()
        if summary is not None:
            print(json.dumps(summary, indent=2))
        return 0

    def _activate(self, model: Path, explicit: bool, product: str = DEFAULT_PRODUCT):
        """``product``'s active version: ``model`` when given explicitly, else whatever is active (a retrained
        version survives restarts), else ``model`` as its v1."""
        from linewatch.trainer.registry import ModelRegistry

        engine = make_engine(self.settings.database_url)
        try:
            registry = ModelRegistry(engine, self.settings.artifact_store_root, self.settings.kafka)
            return registry.use(model, "linewatch up", product) if explicit else \
                registry.ensure_active(model, "linewatch up", product)
        finally:
            engine.dispose()

    # ---- infrastructure -----------------------------------------------------------------------------

    def _start_infrastructure(self) -> dict[str, str]:
        """Start the embedded broker and Redis where none is configured; returns the children's environment."""
        env = {"LINEWATCH_STATE_DIR": str(self.state), "LINEWATCH_DATA_ROOT": str(self.settings.data_root)}
        if not self.settings.kafka.bootstrap_servers:
            broker = ApacheKafka(self.state / "kafka", heap_mb=self.settings.kafka.embedded_heap_mb)
            self.children.services.append(broker)  # listed first: stopped even if its start fails half-way
            broker.start()
            env["LINEWATCH_KAFKA__BOOTSTRAP_SERVERS"] = broker.bootstrap_servers
            print(f"embedded Apache Kafka on {broker.bootstrap_servers} (heap {broker.heap_mb} MiB, "
                  f"data in {broker.data_dir})", flush=True)
        if not self.settings.redis.url:
            redis_proc = redis_server(self.state / "redis").start()
            self.children.services.append(redis_proc)
            env["LINEWATCH_REDIS__URL"] = f"redis://127.0.0.1:{redis_proc.port}/0"
            print(f"embedded Redis on 127.0.0.1:{redis_proc.port}", flush=True)
        os.environ.update(env)
        return env

    def _spawn(self, name: str, args: list[str], env: dict[str, str], capture_stdout: bool = False) -> None:
        logfile = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 -- lives as long as the child
        proc = subprocess.Popen(
            [sys.executable, "-m", "linewatch", *args], env={**os.environ, **env},
            stdout=subprocess.PIPE if capture_stdout else logfile, stderr=logfile, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent,
        )
        self.children.processes[name] = proc

    def _wait_for_workers(self, n: int, timeout_s: float = 180.0) -> None:
        """Wait until ``n`` workers send heartbeats, so the first frames do not wait for a group join.

        Raises:
            ServiceExited: a child ended meanwhile.
            ValueError: the workers did not report within ``timeout_s``.
        """
        reader = LiveStateReader(connect_settings(self.settings.redis))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not self.stop_event.is_set():
            if len([w for w in reader.workers() if w["alive"]]) >= n:
                return
            self._check_children()
            time.sleep(0.5)
        if not self.stop_event.is_set():
            raise ValueError(f"workers did not report within {timeout_s:.0f} s; see {self.logs}")

    # ---- watching -----------------------------------------------------------------------------------

    def _check_inputs(self) -> None:
        """Fail before anything starts when the bottle images that the defaults need are missing."""
        from linewatch.detector.model_files import METADATA_FILE

        o, root = self.options, self.settings.data_root
        if o.products:
            if o.model is not None or o.source is not None:
                raise ValueError("--products runs each product's demo model and data set: leave out --model and "
                                 "--source")
            check_products(o.products)
            if missing := missing_data(root, o.products):
                raise FileNotFoundError(f"{missing[0]}: no such directory. --products replays and trains on the "
                                        "shared data sets: set LINEWATCH_DATA_ROOT to the folder holding them")
            return
        cached = (default_model_dir(self.settings) / METADATA_FILE).is_file()
        needs_data = o.source is None or (o.model is None and not cached)
        if needs_data and not (root / "mvtec_ad" / "bottle").is_dir():
            raise FileNotFoundError(
                f"{root / 'mvtec_ad' / 'bottle'}: no such directory. The defaults train on and replay the MVTec AD "
                "bottle images: set LINEWATCH_DATA_ROOT to the folder holding mvtec_ad/ (default ../shared/data), "
                "or give --model and --source")

    def _watch(self, started: dt.datetime) -> dict | None:
        """Print a status line every second until ``max_frames`` frames are inspected or dead-lettered, or a
        signal arrives; returns the run's summary. Every figure is this run's: rows and latency come from SQL
        rows processed since ``started``, dead letters from Redis minus what it held when the run began.

        Raises:
            ServiceExited: a child process, the embedded broker or Redis ended on its own.
        """
        engine = make_engine(self.settings.database_url)
        reader = LiveStateReader(connect_settings(self.settings.redis))
        dead_before = self._dead_letters(reader, started)
        t0, last_n, last_t = time.monotonic(), 0, time.monotonic()
        published: dict | None = None
        target = self.options.max_frames
        try:
            while not self.stop_event.wait(1.0):
                self._check_children()
                if published is None and all(c.poll() is not None for c in self._cameras()):
                    published = self._published()
                n, defects, latency = this_run(engine, started)
                dead_now = self._dead_letters(reader, started)
                dead = None if dead_now is None or dead_before is None else dead_now - dead_before
                now = time.monotonic()
                fps = (n - last_n) / (now - last_t)
                last_n, last_t = n, now
                p50, p99 = percentiles(latency[-200:])
                rate = defects / n if n else 0.0
                shown_dead = "live state unavailable" if dead is None else f"dead-lettered {dead}"
                print(f"\r{n} inspected  {fps:5.1f} frames/s  defect rate {rate:6.1%}  {shown_dead}  "
                      f"latency p50 {ms(p50)}  p99 {ms(p99)}", end="", flush=True)
                if target and n + (dead or 0) >= target:
                    break
            print(flush=True)
            if published is None and not self.stop_event.is_set():
                for camera in self._cameras():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        camera.wait(30)
                published = self._published()
            dead_now = self._dead_letters(reader, started)
            dead = None if dead_now is None or dead_before is None else dead_now - dead_before
            return self._summary(engine, started, published, dead, t0)
        finally:
            print(flush=True)
            engine.dispose()

    def _cameras(self) -> list[subprocess.Popen]:
        return [p for name, p in self.children.processes.items() if name.startswith("camera")]

    def _published(self) -> dict:
        """The cameras' own count of frames published (each prints its counters as JSON when it ends)."""
        counts = [last_json(c).get("published") for c in self._cameras()]
        return {"published": sum(counts) if None not in counts else None}

    def _check_children(self) -> None:
        """Raise ServiceExited for the first child that ended on its own (a camera may end with code 0)."""
        for name, proc in self.children.processes.items():
            if proc.poll() is not None and (not name.startswith("camera") or proc.returncode != 0):
                raise ServiceExited(name, proc.returncode, self.logs / f"{name}.log")
        for service in self.children.services:
            if service.process is not None and service.process.poll() is not None:
                raise ServiceExited(service.name, service.process.returncode, service.log_path)

    @staticmethod
    def _dead_letters(reader: LiveStateReader, started: dt.datetime) -> int | None:
        """Dead letters Redis counts since the minute ``started`` falls in, or None when Redis does not answer."""
        try:
            return sum(reader.dead_letters(started, dt.datetime.now(dt.UTC)).values())
        except redis.RedisError:
            return None

    def _summary(self, engine, started: dt.datetime, published: dict | None, dead: int | None, t0: float) -> dict:
        return {**run_summary(engine, started, published, dead, time.monotonic() - t0),
                "workers": self.options.workers, "state_dir": str(self.state),
                "stopped_by_signal": self.stop_event.is_set()}

    # ---- stopping -----------------------------------------------------------------------------------

    def _on_signal(self, *_: object) -> None:
        self.stop_event.set()

    def _stop_all(self) -> None:
        """SIGTERM the services (camera first, so workers get its last frames), then the infrastructure."""
        cameras = [n for n in self.children.processes if n.startswith("camera")]
        order = cameras + [n for n in self.children.processes if n not in cameras]
        for name in order:
            proc = self.children.processes.get(name)
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60  # one grace period for all (a dead broker slows every child's stop)
        for name in order:
            proc = self.children.processes.get(name)
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        for service in reversed(self.children.services):
            service.stop()


def run_up(settings: Settings, options: UpOptions) -> int:
    """Entry point of ``linewatch up``; returns the exit code."""
    return Up(settings, options).run()


def _host(address: str) -> str:
    """The host part of the dashboard's URL: localhost for the loopback or every interface."""
    return "localhost" if address in ("127.0.0.1", "0.0.0.0", "::", "") else address
