"""Embedded services for the one-command run (and the tests): the child-process handling, and Redis.

* Kafka: a single-node Apache Kafka, :mod:`linewatch.cli.embedded_kafka` (run as a :class:`ManagedProcess`).
* Redis: Debian's ``redis-server`` binary, with its data in a directory of ours.

Each runs as a child process on a free loopback port; :class:`ManagedProcess` checks that the port
answers *and* that our process is the one answering, and stops it (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


class EmbeddedServiceError(RuntimeError):
    """An embedded service could not be started; the message says why and what to install."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def die_with_parent() -> None:
    """``Popen(preexec_fn=...)``: ask the kernel to send this child SIGTERM when the thread that started it dies
    (Linux ``prctl(PR_SET_PDEATHSIG)``), so a ``linewatch up`` killed with SIGKILL leaves no broker, Redis or
    worker running on. Does nothing where ``prctl`` is missing (not Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


_PR_SET_PDEATHSIG = 1
# Looked up here, in the parent: a forked child should call, not load (other threads may hold loader locks).
_PRCTL = getattr(ctypes.CDLL(None, use_errno=True), "prctl", None)


def run_as(user: str | None) -> dict[str, object]:
    """``subprocess.Popen`` keyword arguments that run a child as ``user`` with that user's groups.

    ``Popen(user=...)`` alone would keep our group and supplementary groups (root's, when we are root).
    Empty for ``None`` (run as ourselves).

    Raises:
        EmbeddedServiceError: no such user.
    """
    if user is None:
        return {}
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise EmbeddedServiceError(f"user {user!r} does not exist") from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": os.getgrouplist(user, entry.pw_gid)}


class ManagedProcess:
    """A server child process listening on one port: start, wait until it answers, stop, restart.

    Args:
        name: for messages and the log file name.
        argv: the command line.
        port: the port it will listen on (127.0.0.1).
        workdir: its output goes to ``workdir/<name>.log``; also its current directory unless ``cwd`` is given.
        env: extra environment variables.
        start_timeout_s: how long to wait for the port to answer.
        user: run it as this user (needs root), e.g. ``postgres``, which refuses to run as root.
        stop_signal: the signal :meth:`stop` sends for a graceful stop (PostgreSQL wants SIGINT: its
            SIGTERM "smart" shutdown waits for every client to disconnect).
        cwd: its current directory, if not ``workdir`` (which ``user`` may not be allowed to enter).
    """

    def __init__(self, name: str, argv: Sequence[str], port: int, workdir: Path, env: dict[str, str] | None = None,
                 start_timeout_s: float = 30.0, user: str | None = None,
                 stop_signal: signal.Signals = signal.SIGTERM, cwd: Path | None = None):
        self.name, self.argv, self.port = name, list(argv), port
        self.workdir = Path(workdir)
        self.env = {**os.environ, **(env or {})}
        self.start_timeout_s = start_timeout_s
        self.user = user
        self.stop_signal = stop_signal
        self.cwd = Path(cwd) if cwd is not None else self.workdir
        self.process: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> ManagedProcess:
        """Start and wait until the port answers.

        Raises:
            EmbeddedServiceError: the port is taken by another process, or ours exited or did not answer in time.
        """
        if port_open("127.0.0.1", self.port):
            raise EmbeddedServiceError(f"{self.name}: port {self.port} is already in use by another process")
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logfile:
            self.process = subprocess.Popen(
                self.argv, cwd=self.cwd, env=self.env, stdout=logfile, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=die_with_parent, **run_as(self.user),
            )
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise EmbeddedServiceError(
                    f"{self.name} exited with code {self.process.returncode} during start; "
                    f"last output:\n{self.tail()}"
                )
            if port_open("127.0.0.1", self.port):
                log.info("%s started (pid %d, port %d)", self.name, self.process.pid, self.port)
                return self
            time.sleep(0.1)
        self.stop()
        raise EmbeddedServiceError(f"{self.name} did not answer on port {self.port} "
                                   f"within {self.start_timeout_s:.0f} s;"
                                   f" last output:\n{self.tail()}")

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout_s: float = 15.0, kill: bool = False) -> None:
        """Send ``stop_signal`` (SIGKILL with ``kill``) to the process group; SIGKILL if it outlives ``timeout_s``."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL if kill else self.stop_signal)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        deadline = time.monotonic() + 10
        while port_open("127.0.0.1", self.port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.process = None

    def restart(self) -> ManagedProcess:
        self.stop()
        return self.start()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_server(workdir: Path, port: int | None = None) -> ManagedProcess:
    """A ``redis-server`` on ``127.0.0.1:port`` keeping its data in ``workdir``.

    Raises:
        EmbeddedServiceError: no ``redis-server`` binary (Debian: ``apt-get install redis-server``).
    """
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).is_file():
        raise EmbeddedServiceError("redis-server not found: install it (Debian: apt-get install redis-server)")
    port = port or free_port()
    # RDB snapshots (and one at shutdown) keep live state across a restart of the embedded Redis.
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir), "--save", "300 1",
            "--appendonly", "no", "--protected-mode", "yes", "--daemonize", "no"]
    return ManagedProcess("redis", argv, port, workdir)
