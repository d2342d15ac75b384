"""The embedded broker of ``linewatch up`` (and of the tests): one Apache Kafka node in KRaft mode.

Bounded by construction: a fixed JVM heap (``kafka.embedded_heap_mb``), its log directory under the
state folder, and retention by time and size on every linewatch topic (set where the topics are
created, :func:`linewatch.contracts.kafka.ensure_topics`), checked every ``RETENTION_CHECK_MS``.

The broker's jars come from Maven Central at *set-up* time: ``python -m linewatch.cli.embedded_kafka``
(run by ``scripts/bootstrap.sh``) resolves ``embedded_kafka.pom.xml`` with Maven into
``$XDG_CACHE_HOME/linewatch/kafka-<version>/libs`` (``~/.cache`` by default; Maven keeps its own
download cache in ``~/.m2``). At run time nothing is downloaded: :func:`kafka_libs` only looks.
Java 17 or newer comes from ``scripts/install-system-deps.sh``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from .embedded import EmbeddedServiceError, ManagedProcess, free_port

POM = Path(__file__).with_name("embedded_kafka.pom.xml")
SETUP_HINT = "run scripts/bootstrap.sh (it installs Java and Maven and fetches Kafka's jars from Maven Central)"
MIN_JAVA = 17  # Kafka 4's broker needs Java 17
RETENTION_CHECK_MS = 30_000  # how often the broker deletes segments past retention (Kafka's default: 5 min)

# Broker settings for a one-node cluster; listeners, ports and paths are added per instance.
BROKER_CONFIG = {
    "process.roles": "broker,controller",
    "node.id": "1",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "auto.create.topics.enable": "false",
    "num.partitions": "1",
    "default.replication.factor": "1",
    "offsets.topic.replication.factor": "1",
    # The default 50 partitions make the first consumer-group join slow on a 2-core machine.
    "offsets.topic.num.partitions": "5",
    "transaction.state.log.replication.factor": "1",
    "transaction.state.log.min.isr": "1",
    "transaction.state.log.num.partitions": "5",
    "share.coordinator.state.topic.replication.factor": "1",
    "share.coordinator.state.topic.min.isr": "1",
    "group.initial.rebalance.delay.ms": "0",
    "message.max.bytes": str(20 * 1024 * 1024),
    "replica.fetch.max.bytes": str(20 * 1024 * 1024),
    "log.retention.check.interval.ms": str(RETENTION_CHECK_MS),
    # A segment past retention is renamed *.deleted and removed this much later (Kafka: 60 s, which at
    # 10 frames/s of bottle PNGs left another ~320 MB on disk in the soak benchmark).
    "log.segment.delete.delay.ms": "5000",
    # The log cleaner of the (tiny) compacted topics takes a 128 MiB on-heap dedupe buffer by default.
    "log.cleaner.dedupe.buffer.size": str(8 * 1024 * 1024),
    # One node on a small machine: fewer request threads than the defaults (3 network, 8 I/O).
    "num.network.threads": "2",
    "num.io.threads": "4",
}

# WARN and above to stdout, which ManagedProcess sends to <workdir>/kafka.log. Log4j's shutdown hook
# is off because Kafka stops itself from its own hook, and log4j then complains on stderr.
LOG4J2_CONFIG = """\
status = warn
shutdownHook = disable
appender.out.type = Console
appender.out.name = out
appender.out.target = SYSTEM_OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.out.ref = out
"""


def jvm_options(heap_mb: int) -> list[str]:
    """JVM flags bounding the broker's memory: a fixed heap (``-Xms`` = ``-Xmx`` = ``heap_mb`` MiB, so RSS
    does not creep up as the heap grows), capped metaspace, code cache and direct buffers, and the serial
    collector (no per-core GC threads or G1 remembered sets on a 2-core machine). Only the C1 JIT
    (``TieredStopAtLevel=1``): start-up on 2 busy cores fell from 15 s to 8.5 s (first start, with the
    storage format) and a restart from 10 s to 5 s; one camera's frames need no C2-compiled broker."""
    return [f"-Xms{heap_mb}m", f"-Xmx{heap_mb}m", "-XX:+UseSerialGC", "-XX:MaxMetaspaceSize=96m",
            "-XX:ReservedCodeCacheSize=64m", "-XX:MaxDirectMemorySize=64m", "-Xss512k", "-XX:TieredStopAtLevel=1",
            "-Djava.awt.headless=true"]


def kafka_version() -> str:
    """The Kafka version pinned by the ``kafka.version`` property of ``embedded_kafka.pom.xml``.

    Raises:
        ValueError: the pom has no ``kafka.version`` property.
    """
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    version = ET.parse(POM).getroot().findtext("m:properties/m:kafka.version", namespaces=ns)
    if not version:
        raise ValueError(f"{POM} has no <kafka.version> property")
    return version.strip()


def libs_dir() -> Path:
    """Where the set-up puts the broker's jars: ``$XDG_CACHE_HOME/linewatch/kafka-<version>/libs``."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "linewatch" / f"kafka-{kafka_version()}" / "libs"


def _pom_stamp() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def kafka_libs() -> Path:
    """The directory of the broker's jars, as the set-up left it (nothing is downloaded here).

    Raises:
        EmbeddedServiceError: the jars of this pom are not there (one line naming the set-up command).
    """
    libs = libs_dir()
    stamp = libs / ".pom-sha256"
    if not (stamp.is_file() and stamp.read_text() == _pom_stamp()):
        raise EmbeddedServiceError(f"Apache Kafka {kafka_version()}'s jars are not set up in {libs}: {SETUP_HINT}")
    return libs


def fetch_kafka_libs() -> Path:
    """Set-up step: resolve the pom's jars from Maven Central (once; a no-op when they are in place).

    The jars go to a scratch directory renamed into place only once Maven succeeds, so an interrupted
    download is never mistaken for a complete one; a stamp of the pom's hash makes an edited pom
    resolve afresh.

    Raises:
        EmbeddedServiceError: Maven is not installed, or it failed (the message has its output).
    """
    try:
        return kafka_libs()
    except EmbeddedServiceError:
        pass
    libs = libs_dir()
    mvn = _require("mvn")
    libs.parent.mkdir(parents=True, exist_ok=True)
    scratch = libs.parent / f"libs.partial-{uuid.uuid4().hex[:8]}"
    try:
        result = subprocess.run(
            [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies",
             "-DincludeScope=runtime", f"-DoutputDirectory={scratch}"],
            capture_output=True, text=True, timeout=900,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-3000:]
            raise EmbeddedServiceError(f"Maven could not resolve Kafka's jars from {POM}:\n{output}")
        (scratch / ".pom-sha256").write_text(_pom_stamp())
        shutil.rmtree(libs, ignore_errors=True)
        try:
            scratch.rename(libs)
        except OSError:  # another process finished the same download first
            return kafka_libs()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return libs


def _require(command: str) -> str:
    """The path of ``command`` on PATH.

    Raises:
        EmbeddedServiceError: it is not installed.
    """
    path = shutil.which(command)
    if path is None:
        raise EmbeddedServiceError(f"{command} not found (needed for the embedded Apache Kafka): {SETUP_HINT}")
    return path


def java_command() -> str:
    """The ``java`` on PATH, checked to be version ``MIN_JAVA`` or newer.

    Raises:
        EmbeddedServiceError: no ``java``, or an older one.
    """
    java = _require("java")
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    found = re.search(r'version "(1\.)?(\d+)', out)
    if found and int(found.group(2)) < MIN_JAVA:
        raise EmbeddedServiceError(f"{java} is Java {found.group(2)}; Apache Kafka needs Java {MIN_JAVA} or newer: "
                                   f"{SETUP_HINT}")
    return java


def _cluster_id() -> str:
    """A random Kafka cluster id: a UUID in URL-safe base64, not starting with '-' (the CLI would read an option)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cluster_id.startswith("-"):
            return cluster_id


class ApacheKafka:
    """One Apache Kafka node (broker + KRaft controller) on ``127.0.0.1``, with its data in ``workdir/data``.

    The storage is formatted by the first :meth:`start` unless ``workdir`` already holds one; later
    starts (also by a new instance, on other ports) reuse it, so acknowledged messages survive
    :meth:`restart`. The broker's log (WARN and above) is ``workdir/kafka.log``.

    Args:
        workdir: config, data and log directory (created if missing).
        port: the client (PLAINTEXT) port; a free one if None. The controller gets another free port.
        heap_mb: the JVM heap, MiB (fixed: ``-Xms`` = ``-Xmx``).
        config: broker properties added to (or replacing) ``BROKER_CONFIG``.
    """

    name = "kafka"
    start_timeout_s = 120.0
    ready_timeout_s = 60.0
    stop_timeout_s = 30.0

    def __init__(self, workdir: Path, port: int | None = None, heap_mb: int = 256,
                 config: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.controller_port = free_port()
        while self.controller_port == self.port:
            self.controller_port = free_port()
        self.heap_mb = heap_mb
        self.config = {**BROKER_CONFIG, **(config or {})}
        self._process: ManagedProcess | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def log_path(self) -> Path:
        return self.workdir / "kafka.log"

    @property
    def process(self):
        """The broker's ``subprocess.Popen`` (None before :meth:`start` and after :meth:`stop`)."""
        return self._process.process if self._process else None

    def start(self) -> ApacheKafka:
        """Start the node (formatting storage first if needed) and wait until it serves.

        Raises:
            EmbeddedServiceError: Java or the jars missing (set-up not run), formatting failed, the process
                exited, or the broker did not answer a metadata request within ``ready_timeout_s`` (the
                message has the log's tail).
        """
        if self._process is None:
            self._process = self._prepare()
        self._process.start()
        self._wait_until_serving()
        return self

    def stop(self, kill: bool = False, timeout_s: float | None = None) -> None:
        """Stop the node: a clean shutdown, or SIGKILL with ``kill`` (data already written survives either way)."""
        if self._process is not None:
            self._process.stop(timeout_s=timeout_s or self.stop_timeout_s, kill=kill)

    def restart(self) -> ApacheKafka:
        """Stop cleanly and start again on the same ports and data."""
        self.stop()
        return self.start()

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the broker's log."""
        return self._process.tail(lines) if self._process else "(not started)"

    def _prepare(self) -> ManagedProcess:
        """Write the configs, format the storage once, and return the (not yet started) broker process.

        Raises:
            EmbeddedServiceError: Java or the jars missing, or the storage tool failed.
        """
        java = java_command()
        classpath = str(kafka_libs() / "*")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "server.properties"
        log4j = self.workdir / "log4j2.properties"
        settings = {
            **self.config,
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            # A static voter set (not a `--standalone` format) lives in this file rather than in the
            # formatted storage, so the data dir stays usable if the ports change.
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "log.dirs": str(self.data_dir.resolve()),
        }
        config.write_text("".join(f"{key}={value}\n" for key, value in settings.items()))
        log4j.write_text(LOG4J2_CONFIG)
        jvm = [java, *jvm_options(self.heap_mb), f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath]
        if not (self.data_dir / "meta.properties").is_file():
            result = subprocess.run(
                [*jvm, "kafka.tools.StorageTool", "format", "--cluster-id", _cluster_id(), "--config", str(config)],
                capture_output=True, text=True, timeout=120,
            )
            if result.returncode != 0:
                raise EmbeddedServiceError(
                    f"Kafka storage format failed:\n{(result.stdout + result.stderr).strip()[-3000:]}")
        return ManagedProcess("kafka", [*jvm, "kafka.Kafka", str(config)], self.port, self.workdir,
                              start_timeout_s=self.start_timeout_s)

    def _wait_until_serving(self) -> None:
        """Wait until an admin client can list topics: the port opens before the broker serves requests.

        Raises:
            EmbeddedServiceError: the process exited, or no answer within ``ready_timeout_s``.
        """
        deadline = time.monotonic() + self.ready_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if not self.running():
                raise EmbeddedServiceError(f"Kafka exited while starting; log tail:\n{self.tail()}")
            try:
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers,
                                         bootstrap_timeout_ms=5000, request_timeout_ms=5000)
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except (KafkaError, OSError) as exc:
                last_error = exc
            time.sleep(0.5)
        self.stop(kill=True)
        raise EmbeddedServiceError(
            f"Kafka on {self.bootstrap_servers} did not serve metadata within {self.ready_timeout_s:.0f} s "
            f"(last error: {last_error!r}); log tail:\n{self.tail()}")


if __name__ == "__main__":  # the set-up step: python -m linewatch.cli.embedded_kafka
    try:
        java_command()
        print(f"Apache Kafka {kafka_version()} jars: {fetch_kafka_libs()}")
    except EmbeddedServiceError as exc:
        sys.exit(f"error: {exc}")
