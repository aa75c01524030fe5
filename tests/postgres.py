"""A real PostgreSQL for the tests: Debian's postgresql-15, ``initdb`` + ``pg_ctl`` in a temp dir, on loopback.

One server per test session (``tests/conftest.py``: the xdist controller starts it, as it does SeaweedFS);
each test gets a database of its own (``PostgreSQL.new_database()``). A test that stops the server starts one
of its own (``PostgreSQL(workdir).start()``), which ``stop`` and ``start`` again keep on the same port and data.
Run as root, the server runs as the ``postgres`` system user, which the Debian package creates. Local connections
use a password (scram), as a deployment would.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

from tests.fixtures import free_port, wait_for

BIN = Path("/usr/lib/postgresql/15/bin")
USER = "converter"
PASSWORD = "converter-test-password"


class PostgreSQL:
    def __init__(self, workdir: Path, durable: bool = False) -> None:
        """``durable``: Debian's defaults (fsync, synchronous commits, full page writes), as a deployment runs it
        (the benchmarks); without it the tests' server skips the flushes that only a power cut would need."""
        self.workdir = workdir
        self.port = free_port()
        self.data = workdir / "data"
        self.durable = durable

    @property
    def admin_url(self) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def running_at(cls, port: int) -> "PostgreSQL":
        server = cls.__new__(cls)
        server.workdir, server.data, server.port = None, None, port
        return server

    def start(self) -> "PostgreSQL":
        if not (BIN / "initdb").exists():
            raise RuntimeError("PostgreSQL 15 not found: `make setup` installs postgresql-15")
        if not self.data.exists():
            self._initdb()
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.workdir}"
                   " -c max_connections=300")
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(BIN / "pg_ctl", "-D", str(self.data), "-l", str(self.workdir / "postgres.log"), "-o", options,
                  "-w", "start")
        wait_for(self._ready, 30, 0.1, "PostgreSQL to accept connections")
        return self

    def _initdb(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        password_file = self.workdir / "pwfile"
        password_file.write_text(PASSWORD + "\n")
        self._as_server_user_owns(self.workdir, password_file)
        self._run(BIN / "initdb", "-D", str(self.data), "-U", USER, "--auth=scram-sha-256",
                  f"--pwfile={password_file}", "-E", "UTF8", "--locale=C.UTF-8")

    def _ready(self) -> bool:
        import psycopg
        try:
            with psycopg.connect(self.admin_url, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as connection:
            connection.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self, mode: str = "immediate") -> None:
        """``pg_ctl stop -m mode``: ``immediate`` (a crash, recovered at the next start) or ``fast`` (clients
        disconnected, a clean shutdown)."""
        if self.data is not None and (self.data / "postmaster.pid").exists():
            self._run(BIN / "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def _run(self, *command, check: bool = True) -> None:
        argv = [str(part) for part in command]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=check, capture_output=True, timeout=120)

    @staticmethod
    def _as_server_user_owns(*paths: Path) -> None:
        if os.geteuid() != 0:
            return
        user = pwd.getpwnam("postgres")
        for path in paths:
            shutil.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(paths[0], 0o700)
