"""A throw-away PostgreSQL cluster for integration tests, tuned for speed over durability.

PostgreSQL refuses to run as root, so when we are root the cluster runs as the ``postgres`` system
user. That user cannot enter pytest's temporary directories (``/tmp/pytest-of-root`` is mode 0700),
so the cluster itself (data directory and unix socket) lives in a private directory of its own under
the system temp dir, owned by the server's user and removed by :meth:`PostgresServer.close`. The
server's log goes to ``workdir/postgres.log``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path

import psycopg

from linewatch.cli.embedded import EmbeddedServiceError, ManagedProcess, free_port, run_as

INSTALL_HINT = "run scripts/install-system-deps.sh"
SUPERUSER = "postgres"
# Only reachable on 127.0.0.1 of a test machine, for the lifetime of a test session.
SUPERUSER_PASSWORD = "postgres"

# Durability is irrelevant for a test cluster; these make commits and checkpoints cheap.
SERVER_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


def postgres_bin_dir() -> Path:
    """The ``bin`` directory of the newest PostgreSQL server installed under ``/usr/lib/postgresql``.

    Raises:
        EmbeddedServiceError: no server binaries are installed there.
    """
    candidates = [
        path for path in Path("/usr/lib/postgresql").glob("*/bin")
        if re.fullmatch(r"\d+", path.parent.name) and (path / "postgres").is_file() and (path / "initdb").is_file()
    ]
    if not candidates:
        raise EmbeddedServiceError(f"PostgreSQL server not found under /usr/lib/postgresql/*/bin: {INSTALL_HINT}")
    return max(candidates, key=lambda path: int(path.parent.name))


class PostgresServer:
    """A PostgreSQL server on ``127.0.0.1:port`` with a role and database ``linewatch`` (password ``linewatch``).

    The cluster is created by the first :meth:`start` and kept across :meth:`stop` / :meth:`restart`;
    :meth:`close` stops the server and deletes the cluster.

    Args:
        workdir: where the server's log goes (created if missing).
        port: the TCP port; a free one if None.
    """

    user = "linewatch"
    password = "linewatch"
    database = "linewatch"
    start_timeout_s = 60.0

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        # PostgreSQL will not run as root; as anyone else it runs as ourselves.
        self.os_user = "postgres" if os.geteuid() == 0 else None
        self.cluster_dir: Path | None = None
        self._remove_cluster: weakref.finalize | None = None
        self._process: ManagedProcess | None = None
        self._database_created = False

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (psycopg 3 driver) of the ``linewatch`` database."""
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"

    def fresh_database(self, name: str) -> str:
        """Create an empty database ``name`` (dropped first if it exists) owned by the ``linewatch`` role, for a
        test that needs a record of its own; returns its SQLAlchemy URL."""
        with psycopg.connect(self._superuser_conninfo(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name} OWNER {self.user}")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "postgres.log"

    def start(self) -> PostgresServer:
        """Start the server, creating the cluster, role and database first if this is the first start.

        Raises:
            EmbeddedServiceError: PostgreSQL is not installed, initdb failed, the server exited, or
                it did not accept connections within ``start_timeout_s`` (the message has the log's tail).
        """
        if self._process is None:
            self._process = self._prepare()
        self._process.start()
        self._wait_until_accepting()
        if not self._database_created:
            self._create_database()
            self._database_created = True
        return self

    def stop(self, kill: bool = False) -> None:
        """Stop the server: PostgreSQL's fast shutdown (disconnects clients), or SIGKILL with ``kill``."""
        if self._process is not None:
            self._process.stop(kill=kill)

    def restart(self) -> PostgresServer:
        """Stop and start again on the same port and data."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete the cluster."""
        self.stop()
        if self._remove_cluster is not None:
            self._remove_cluster()

    def running(self) -> bool:
        return self._process is not None and self._process.running()

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` of the server's log."""
        return self._process.tail(lines) if self._process else "(not started)"

    def _superuser_conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} password={SUPERUSER_PASSWORD} dbname=postgres"

    def _prepare(self) -> ManagedProcess:
        """Create the cluster directory and run initdb; return the (not yet started) server process.

        Raises:
            EmbeddedServiceError: PostgreSQL or the ``postgres`` user missing, or initdb failed.
        """
        bin_dir = postgres_bin_dir()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cluster_dir = Path(tempfile.mkdtemp(prefix="linewatch-pg-"))
        # Also runs at interpreter exit, so an aborted session does not leave a cluster behind.
        self._remove_cluster = weakref.finalize(self, shutil.rmtree, self.cluster_dir, True)
        credentials = run_as(self.os_user)
        if credentials:
            os.chown(self.cluster_dir, credentials["user"], credentials["group"])
        data_dir = self.cluster_dir / "data"
        password_file = self.cluster_dir / "superuser-password"
        password_file.write_text(SUPERUSER_PASSWORD + "\n")
        if credentials:
            os.chown(password_file, credentials["user"], credentials["group"])
        try:
            result = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", SUPERUSER, f"--pwfile={password_file}",
                 "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions"],
                cwd=self.cluster_dir, capture_output=True, text=True, timeout=300, **credentials,
            )
        finally:
            password_file.unlink()
        if result.returncode != 0:
            raise EmbeddedServiceError(f"initdb failed:\n{(result.stdout + result.stderr).strip()[-3000:]}")
        settings = {**SERVER_SETTINGS, "listen_addresses": "127.0.0.1", "port": str(self.port),
                    "unix_socket_directories": str(self.cluster_dir)}
        argv = [str(bin_dir / "postgres"), "-D", str(data_dir)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for every pooled client to leave.
        return ManagedProcess("postgres", argv, self.port, self.workdir, start_timeout_s=self.start_timeout_s,
                              user=self.os_user, stop_signal=signal.SIGINT, cwd=self.cluster_dir)

    def _wait_until_accepting(self) -> None:
        """Wait until the superuser can connect: the port opens while the server is still recovering.

        Raises:
            EmbeddedServiceError: the server exited, or did not accept connections within ``start_timeout_s``.
        """
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                psycopg.connect(self._superuser_conninfo(), connect_timeout=5).close()
                return
            except psycopg.OperationalError as exc:
                if not self.running():
                    raise EmbeddedServiceError(f"PostgreSQL exited while starting; log tail:\n{self.tail()}") from None
                if time.monotonic() > deadline:
                    self.stop(kill=True)
                    raise EmbeddedServiceError(
                        f"PostgreSQL on port {self.port} did not accept connections within "
                        f"{self.start_timeout_s:.0f} s ({exc}); log tail:\n{self.tail()}") from None
            time.sleep(0.2)

    def _create_database(self) -> None:
        """Create the ``linewatch`` role and the database it owns, over TCP as the superuser."""
        with psycopg.connect(self._superuser_conninfo(), autocommit=True) as conn:
            conn.execute(f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}'")
            conn.execute(f"CREATE DATABASE {self.database} OWNER {self.user}")
