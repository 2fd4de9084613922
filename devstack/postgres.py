"""A throwaway PostgreSQL server on loopback: the running Airflow's metadata database.

Airflow on SQLite serializes every write behind one file lock with a 5 s busy timeout: with the scheduler,
dag-processor, triggerer and api-server writing at once, a REST call that waits longer fails with HTTP 500
"database is locked" (seen in this project's CI on PATCH /dags; apache/airflow#66726 is the same on
backfills). Airflow supports SQLite for trials only, and clusters run PostgreSQL (the official Helm chart's
default), so the local stack does too: Debian's PostgreSQL (`make system-deps` installs it), one cluster per
Airflow, in a fresh folder that is removed on stop.

PostgreSQL refuses to run as root, so under root the cluster belongs to the ``postgres`` user (``nobody``
where Debian's package did not create it) and every server process runs as that user through setpriv.
Password auth (scram-sha-256, a generated password), TCP on 127.0.0.1 only, no Unix socket.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .procs import LOOPBACK, free_ports, port_open, spawn, stop_group, wait_until

DATABASE = "airflow"
USER = "airflow"
# Durability of a metadata database that is deleted on stop buys nothing; skipping fsync keeps 2 cores free.
SERVER_SETTINGS = {
    "listen_addresses": LOOPBACK,
    "unix_socket_directories": "",
    "max_connections": "200",  # 4 Airflow components x (sync + async pools) + the CLI's calls
    "shared_buffers": "32MB",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def bindir() -> Path:
    """Where initdb and postgres are: on PATH, else Debian's /usr/lib/postgresql/<major>/bin (newest)."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if not found:
        raise PostgresMissing("PostgreSQL is not installed (no initdb on PATH or in /usr/lib/postgresql/*/bin): "
                              "run `make system-deps` as root, or `apt-get install postgresql`")
    return Path(found[-1]).parent


def _server_user() -> pwd.struct_passwd | None:
    """The user the cluster runs as when we are root (None: as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL as")


@dataclass
class PostgresServer:
    """One PostgreSQL cluster with database ``airflow`` owned by user ``airflow``."""

    port: int = 0
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    base: Path | None = None
    pid: int | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL Airflow's ``[database] sql_alchemy_conn`` takes (async: asyncpg, derived)."""
        return f"postgresql+psycopg2://{USER}:{self.password}@{LOOPBACK}:{self.port}/{DATABASE}"

    @property
    def log_path(self) -> Path:
        assert self.base is not None
        return self.base / "postgres.log"

    def _as_server_user(self, cmd: list[str]) -> list[str]:
        user = _server_user()
        if user is None:
            return cmd
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", *cmd]

    def _env(self) -> dict[str, str]:
        # No PG* variables from the caller's environment (they would redirect initdb or the server).
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        return {**env, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}

    def start(self, timeout: float = 60.0) -> PostgresServer:
        bin_dir = bindir()
        # Outside the caller's folders: pytest's and the project's may not be traversable by the server user.
        self.base = Path(tempfile.mkdtemp(prefix="rollout-postgres-"))
        try:
            pwfile = self.base / "password"
            pwfile.write_text(self.password + "\n")
            user = _server_user()
            if user is not None:
                os.chown(self.base, user.pw_uid, user.pw_gid)
                os.chown(pwfile, user.pw_uid, user.pw_gid)
            data = self.base / "data"
            init = subprocess.run(
                self._as_server_user([str(bin_dir / "initdb"), "-D", str(data), "-U", USER, "-E", "UTF8",
                                      "--auth=scram-sha-256", f"--pwfile={pwfile}", "--no-sync", "--no-instructions"]),
                capture_output=True, text=True, env=self._env(), cwd=self.base, timeout=120)
            if init.returncode != 0:
                raise RuntimeError(f"initdb failed (exit {init.returncode}): {init.stderr[-2000:]}")
            pwfile.unlink()
            self.port = self.port or free_ports(1)[0]
            settings = [arg for key, value in {**SERVER_SETTINGS, "port": str(self.port)}.items()
                        for arg in ("-c", f"{key}={value}")]
            log = self.base / "postgres.log"
            proc = spawn(self._as_server_user([str(bin_dir / "postgres"), "-D", str(data), *settings]),
                         log_path=log, env=self._env(), cwd=self.base)
            self.pid = proc.pid
            wait_until(lambda: port_open(self.port) and self._can_connect(), timeout=timeout,
                       what=f"PostgreSQL on port {self.port}", proc=proc, log_path=log)
            self._create_database()
        except BaseException:
            self.stop()
            raise
        return self

    def _connect(self, database: str) -> Any:  # psycopg2's connection
        import psycopg2

        return psycopg2.connect(host=LOOPBACK, port=self.port, user=USER, password=self.password,
                                dbname=database, connect_timeout=5)

    def _can_connect(self) -> bool:
        import psycopg2

        try:
            self._connect("postgres").close()
        except psycopg2.OperationalError:
            return False  # still starting ("the database system is starting up")
        return True

    def _create_database(self) -> None:
        conn = self._connect("postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {DATABASE} OWNER {USER}")
        finally:
            conn.close()

    def stop(self) -> None:
        if self.pid is not None:
            # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client to disconnect).
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
            stop_group(self.pid, grace=15.0)
            self.pid = None
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None
