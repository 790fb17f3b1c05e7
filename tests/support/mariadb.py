"""MariaDB for the interaction-log tests.

Normal tests use the machine's shared server (127.0.0.1:3306, root, no password) with a
database of their own, ``vlm_test_<random>``, dropped at the end. Drills that stop, kill or
freeze the server use a private instance: its own port, its own data directory under a
temporary folder, started from /usr/sbin/mariadbd. The shared server is never stopped.

The private instance keeps the server's compiled-in defaults (latin1, no config files read):
the code under test must ask for utf8mb4 itself, as it has to on any server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from gateway.db.engine import create_database_if_missing, create_sync_engine, drop_database
from localstack.processes import free_port

SHARED_HOST = "127.0.0.1"
SHARED_PORT = 3306
MARIADBD = "/usr/sbin/mariadbd"


def shared_server_url(database: str) -> str:
    return f"mysql://root@{SHARED_HOST}:{SHARED_PORT}/{database}"


def ping(port: int, host: str = "127.0.0.1", timeout_s: int = 1) -> None:
    """Connect as root and run SELECT 1; raises sqlalchemy.exc.DBAPIError when it cannot."""
    engine = create_engine(
        f"mysql+pymysql://root@{host}:{port}/",
        poolclass=NullPool,
        connect_args={"connect_timeout": timeout_s},
    )
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    finally:
        engine.dispose()


def shared_server_error() -> str | None:
    """None when the shared server answers; else why not."""
    try:
        ping(SHARED_PORT, SHARED_HOST, timeout_s=3)
    except DBAPIError as exc:
        where = f"{SHARED_HOST}:{SHARED_PORT}"
        return f"MariaDB on {where} is not reachable ({exc}); run `make services`"
    return None


@contextmanager
def shared_database(prefix: str = "vlm_test") -> Iterator[str]:
    """A fresh database on the shared server; its URL. Dropped afterwards."""
    url = shared_server_url(f"{prefix}_{uuid.uuid4().hex[:10]}")
    create_database_if_missing(url)
    try:
        yield url
    finally:
        drop_database(url)


class PrivateMariaDB:
    """A throwaway mariadbd: own port, datadir, socket and pid file."""

    def __init__(self, directory: Path | None = None) -> None:
        # Short path: the unix socket path must stay under 108 bytes.
        self.directory = directory or Path(tempfile.mkdtemp(prefix="vlm-mariadb-"))
        self.datadir = self.directory / "data"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._installed = False

    def url(self, database: str = "vlm") -> str:
        return f"mysql://root@127.0.0.1:{self.port}/{database}"

    def _user_args(self) -> list[str]:
        return ["--user=root"] if os.geteuid() == 0 else []

    def install(self) -> None:
        installer = shutil.which("mariadb-install-db") or "/usr/bin/mariadb-install-db"
        self.directory.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [installer, "--no-defaults", f"--datadir={self.datadir}", *self._user_args(),
             "--auth-root-authentication-method=normal", "--skip-test-db",
             "--skip-name-resolve"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        self._installed = True

    def start(self, timeout_s: float = 60.0) -> None:
        if not self._installed:
            self.install()
        log = self.directory / "error.log"
        self.process = subprocess.Popen(
            [MARIADBD, "--no-defaults", f"--datadir={self.datadir}", f"--port={self.port}",
             "--bind-address=127.0.0.1", f"--socket={self.directory / 'mysqld.sock'}",
             f"--pid-file={self.directory / 'mysqld.pid'}", f"--log-error={log}",
             "--skip-name-resolve", "--skip-log-bin", "--performance-schema=OFF",
             "--innodb-buffer-pool-size=64M", "--max-connections=100", *self._user_args()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
                raise RuntimeError(f"private mariadbd exited ({self.process.returncode}): {tail}")
            try:
                ping(self.port)
                return
            except DBAPIError:
                time.sleep(0.05)
        raise RuntimeError("private mariadbd did not start in time")

    def stop(self) -> None:
        """Clean shutdown (SIGTERM), as a service manager stops it."""
        if self.process is not None and self.process.poll() is None:
            self.thaw()
            self.process.terminate()
            self.process.wait(timeout=60)

    def kill(self) -> None:
        """Crash (SIGKILL): committed transactions survive, in-flight ones do not."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)

    def create_database(self, database: str = "vlm") -> str:
        url = self.url(database)
        create_database_if_missing(url)
        return url

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.directory, ignore_errors=True)


def logged_rows(
    database_url: str, request_id: str, timeout_s: float = 10.0
) -> list[dict[str, Any]]:
    """The rows logged for a request id (the log key is the id plus a random suffix)."""
    engine = create_sync_engine(database_url)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            with engine.connect() as conn:
                rows = [
                    dict(row._mapping)
                    for row in conn.execute(
                        text("SELECT * FROM interactions WHERE request_id LIKE :prefix"),
                        {"prefix": f"{request_id}.%"},
                    )
                ]
            if rows or time.monotonic() > deadline:
                for row in rows:  # a raw query returns the JSON column as text
                    row["images"] = json.loads(row["images"]) if row["images"] else []
                return rows
            time.sleep(0.1)
    finally:
        engine.dispose()


@contextmanager
def running_private_mariadb() -> Iterator[PrivateMariaDB]:
    """A started private instance, removed (data directory and all) afterwards."""
    db = PrivateMariaDB()
    db.start()
    try:
        yield db
    finally:
        db.remove()
