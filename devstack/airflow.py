"""A running Airflow on loopback: api-server, scheduler (LocalExecutor), dag-processor and triggerer.

Started as separate components, as on a cluster, so the deploy DAG runs the way users run it (not
``dag.test()``): the scheduler queues tasks on the LocalExecutor, the triggerer runs deferred sensors and
pods, the api-server serves the UI and the REST API. What makes that work, each checked here:

- one ``[api_auth] jwt_secret`` for every component (each generates its own otherwise and every task fails
  with "Invalid auth token"); generated once per AIRFLOW_HOME, 64 random bytes, file mode 0600, never in
  the repository;
- the pools the DAGs use, from ``airflow-pools.json`` (the scheduler never runs a task whose pool does not
  exist, and says so only in its own log);
- nothing beyond loopback: the api-server binds 127.0.0.1, the scheduler's and triggerer's log servers
  (0.0.0.0 by default) are not started; the api-server reads the task logs from the shared log folder;
- SimpleAuthManager with one admin user whose generated password is read from the password file.

The database is a PostgreSQL server of its own (devstack/postgres.py: on SQLite, concurrent writers made
REST calls fail with "database is locked") unless ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` names one.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .postgres import PostgresServer
from .procs import LOOPBACK, free_ports, spawn, stop_group, wait_until

if TYPE_CHECKING:
    from .stack import LocalStack

REPO = Path(__file__).resolve().parent.parent
POOLS_FILE = REPO / "airflow-pools.json"
COMPONENTS = ("api-server", "scheduler", "dag-processor", "triggerer")
# Started while the pools and connections are imported: neither runs a task nor opens a connection.
# The scheduler (runs tasks) and the triggerer (its SQS watcher reads aws_default) start after the imports.
EARLY_COMPONENTS = ("api-server", "dag-processor")
# Between two looks at what the REST API (or a log) says: a deploy step ends within a second of its pod.
POLL_S = 0.5
# The components /api/v2/monitor/health reports on; each must say "healthy".
HEALTH_COMPONENTS = ("metadatabase", "scheduler", "dag_processor", "triggerer")
USERNAME = "admin"
# The AWS keys of the environment: left out of the components' environment when a connection holds them.
AWS_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


@dataclass
class AirflowServer:
    """The four components in their own process groups, sharing ``home`` (AIRFLOW_HOME) and ``env``."""

    home: Path
    env: dict[str, str] = field(default_factory=dict)  # the stack's (S3, Triton, KUBECONFIG, ...)
    # Airflow connections to create ({conn_id: {"conn_type": ..., "login": ..., "extra": {...}}}), imported
    # from a file in AIRFLOW_HOME (mode 0600: it holds credentials) with `airflow connections import`.
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Variables the components must not inherit (e.g. AWS keys, so S3 access can only come from a connection).
    unset: tuple[str, ...] = ()
    dags_folder: Path = REPO / "dags"
    port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # The metadata database this server started (None while stopped, or when the environment names one).
    database: PostgresServer | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "component-logs"

    @classmethod
    def for_stack(cls, stack: LocalStack, home: Path, **extra_env: str) -> AirflowServer:
        """The Airflow of ``stack`` (as `make up`, `make demo` and the tests run it): the stack's
        environment plus ``extra_env``, S3 for the Airflow side only through the ``aws_default``
        connection (the AWS keys are left out of the components' environment; the pods keep their Secret),
        Kubernetes through the kubeconfig of the ServiceAccount the project's RBAC binds."""
        # Kubernetes as the ServiceAccount k8s/rbac.yaml binds, not the emulator's admin.
        kube = {"KUBECONFIG": str(stack.airflow_kube)} if stack.airflow_kube else {}
        return cls(home, env={**stack.env(), **kube, **extra_env}, connections=stack.airflow_connections(),
                   unset=AWS_KEYS)

    def component_env(self) -> dict[str, str]:
        inherited = {k: v for k, v in {**os.environ, **self.env}.items() if k not in self.unset}
        return {
            **inherited,
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW_CONFIG": str(REPO / "airflow.cfg"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
            # The project's plugins (the Triton models view); plugins/.airflowignore keeps the library out.
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            **({"AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database.url} if self.database else {}),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USERNAME}:admin",
            "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret(),
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__WORKERS": "1",  # 2 cores
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            # Where users reach the UI: the links in task notifications (and ti.log_url) are built on it;
            # unset, Airflow assumes http://localhost:8080. One set in the environment wins.
            "AIRFLOW__API__BASE_URL": inherited.get("AIRFLOW__API__BASE_URL") or self.url,
        }

    def _jwt_secret(self) -> str:
        path = self.home / "jwt_secret"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(64))  # >= the HMAC-SHA512 key size Airflow warns below
        return path.read_text().strip()

    def _connections_file(self) -> Path:
        path = self.home / "connections.json"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.connections, fh, indent=1)
        return path

    def _airflow(self, *args: str, timeout: float = 300) -> str:
        return self._airflow_all([list(args)], timeout=timeout)[0]

    def _airflow_all(self, commands: list[list[str]], timeout: float = 300) -> list[str]:
        """Run the ``airflow`` CLI commands side by side (each is seconds of imports); their outputs, in order.
        Fails naming the first command that failed, after all have ended."""
        env = self.component_env()
        procs = [subprocess.Popen([sys.executable, "-m", "airflow", *args], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in commands]
        try:
            outputs = [proc.communicate(timeout=timeout) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        for args, proc, (out, err) in zip(commands, procs, outputs, strict=True):
            if proc.returncode != 0:
                raise RuntimeError(f"airflow {' '.join(args)} failed (exit {proc.returncode}):\n"
                                   f"{out[-2000:]}{err[-2000:]}")
        return [out for out, _ in outputs]

    def _spawn(self, name: str, env: dict[str, str]) -> None:
        args = [name, *(["--skip-serve-logs"] if name in ("scheduler", "triggerer") else [])]
        self.procs[name] = spawn([sys.executable, "-m", "airflow", *args], env=env,
                                 log_path=self.log_dir / f"{name}.log", cwd=self.home)

    def start(self, timeout: float = 180.0) -> AirflowServer:
        """Migrate the database, import the pools, start the four components, wait until all are healthy.
        On failure everything started is stopped again and the error names the component and its log."""
        self.port = self.port or free_ports(1)[0]
        self.home.mkdir(parents=True, exist_ok=True)
        try:
            if not self._database_given():
                self.database = PostgresServer().start()
            self._airflow("db", "migrate")
            env = self.component_env()
            for name in EARLY_COMPONENTS:
                self._spawn(name, env)
            imports = [["pools", "import", str(POOLS_FILE)]]
            if self.connections:
                imports.append(["connections", "import", "--overwrite", str(self._connections_file())])
            self._airflow_all(imports)
            for name in COMPONENTS:
                if name not in self.procs:
                    self._spawn(name, env)
            wait_until(self.healthy, timeout=timeout, what="Airflow (api-server, scheduler, dag-processor, triggerer)",
                       proc=self.procs["api-server"], log_path=self.log_dir / "api-server.log")
        except BaseException:
            self.stop()
            raise
        return self

    def _database_given(self) -> bool:
        return any("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" in env for env in (self.env, os.environ))

    def healthy(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"Airflow {name} exited with code {proc.returncode}; see "
                                   f"{self.log_dir / (name + '.log')}")
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/monitor/health", timeout=2) as resp:
                health = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ValueError):
            return False
        return all((health.get(c) or {}).get("status") == "healthy" for c in HEALTH_COMPONENTS)

    def wait_for_sqs_watcher(self, queue_url: str, timeout: float = 180.0) -> None:
        """Until the triggerer runs the AssetWatcher that long-polls ``queue_url``: a paused DAG's assets get
        no watcher, so after an unpause it starts at the dag-processor's next parse of the file."""
        log = self.log_dir / "triggerer.log"
        deadline = time.monotonic() + timeout
        # The amazon provider's SqsSensorTrigger logs this line when it starts polling (triggers/sqs.py).
        while f"Starting SQS sensor trigger for queue '{queue_url}'" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline:
                raise RuntimeError(f"no SQS watcher for {queue_url} started within {timeout:.0f}s: see {log}")
            time.sleep(POLL_S)

    @property
    def password(self) -> str:
        """The admin's password, generated by SimpleAuthManager on the api-server's first start."""
        path = self.home / "simple_auth_manager_passwords.json.generated"
        return str(json.loads(path.read_text())[USERNAME])

    def pids(self) -> dict[str, int]:
        pids = {f"airflow-{name}": proc.pid for name, proc in self.procs.items()}
        if self.database is not None and self.database.pid is not None:
            pids["airflow-postgres"] = self.database.pid
        return pids

    def kill(self, name: str) -> int:
        """SIGKILL component ``name``'s whole process group (the scheduler's executor workers with it), as a
        crashed container goes (the faults suite); returns its pid. :meth:`restart` starts it again. Task
        processes run in groups of their own and survive it."""
        proc = self.procs.pop(name)
        os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        proc.wait(timeout=30)
        return proc.pid

    def restart(self, name: str, timeout: float = 120.0) -> None:
        """Start a killed component again (appending to its log) and wait until every component is healthy."""
        self._spawn(name, self.component_env())
        wait_until(self.healthy, timeout=timeout, what=f"Airflow after restarting the {name}",
                   proc=self.procs[name], log_path=self.log_dir / f"{name}.log")

    def stop(self) -> None:
        # All four at once, each with its own grace period and then SIGKILL (stop_group): one after the other
        # made the teardown the sum of four shutdowns. Every group is gone when this returns.
        procs = [self.procs.pop(name) for name in COMPONENTS if name in self.procs]
        if procs:
            with ThreadPoolExecutor(max_workers=len(procs)) as pool:
                list(pool.map(lambda proc: stop_group(proc.pid, grace=10.0), procs))
        if self.database is not None:
            self.database.stop()
            self.database = None

    def __enter__(self) -> AirflowServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AirflowClient:
    """The REST API as the UI uses it: a Bearer token from /auth/token, then /api/v2."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        self._token = self._login(username, password)

    def _login(self, username: str, password: str) -> str:
        body = json.dumps({"username": username, "password": password}).encode()
        req = urllib.request.Request(f"{self.url}/auth/token", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return str(json.loads(resp.read())["access_token"])

    def request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/api/v2{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {self._token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            text = resp.read()
            return json.loads(text) if text else None

    def get_text(self, path: str) -> str:
        """A page outside /api/v2 (e.g. a plugin's), as the UI fetches it with the same Bearer token."""
        req = urllib.request.Request(f"{self.url}{path}", headers={"Authorization": f"Bearer {self._token}"})
        with urllib.request.urlopen(req, timeout=60) as resp:
            return str(resp.read().decode(errors="replace"))

    def wait_for_dag(self, dag_id: str, timeout: float = 120.0) -> None:
        """Until the dag-processor has parsed ``dag_id`` (a fresh install parses after start)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.request("GET", f"/dags/{dag_id}")
                return
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            time.sleep(POLL_S)
        raise RuntimeError(f"DAG {dag_id} was not parsed within {timeout:.0f}s: see the dag-processor log")

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/dags/{dag_id}", {"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, *, logical_date: datetime | None = None) -> str:
        """Unpause ``dag_id`` and trigger a run as the UI's form does: ``logical_date`` null (REST clients)
        or the date the form pre-fills ("now"); returns the run id."""
        self.unpause(dag_id)
        body = {"logical_date": logical_date.isoformat() if logical_date else None, "conf": conf or {}}
        run = self.request("POST", f"/dags/{dag_id}/dagRuns", body)
        return str(run["dag_run_id"])

    def backfill(self, dag_id: str, from_date: datetime, to_date: datetime) -> int:
        """Create a backfill the scheduler runs (one run per schedule interval, one at a time, dates with a
        run already skipped); returns its id."""
        body = {"dag_id": dag_id, "from_date": from_date.isoformat(), "to_date": to_date.isoformat(),
                "max_active_runs": 1, "reprocess_behavior": "none"}
        return int(self.request("POST", "/backfills", body)["id"])

    def runs(self, dag_id: str, **query: str | list[str]) -> list[dict[str, Any]]:
        """The DAG's runs, oldest first (``query``: the REST API's filters, e.g. run_type="backfill",
        state=["queued", "running"]); at most 100."""
        from urllib.parse import urlencode

        params = urlencode({"order_by": "run_after", "limit": "100", **query}, doseq=True)
        return list(self.request("GET", f"/dags/{dag_id}/dagRuns?{params}")["dag_runs"])

    def wait_until_idle(self, dag_id: str, timeout: float = 600.0) -> None:
        """Until no run of ``dag_id`` is queued or running. A backfill's runs are not held back by the DAG's
        max_active_runs (Airflow 3 counts them apart), so a backfill must not start beside a deploy."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.runs(dag_id, state=["queued", "running"]):
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"{dag_id} still has active runs after {timeout:.0f}s")

    def wait_for_backfill(self, backfill_id: int, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.request("GET", f"/backfills/{backfill_id}").get("completed_at"):
                return
            time.sleep(POLL_S)
        raise RuntimeError(f"backfill {backfill_id} not completed after {timeout:.0f}s")

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 600.0) -> dict[str, str]:
        """Until the run ends; returns {task_id: state}."""
        from urllib.parse import quote

        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = self.request("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}")["state"]
            if state in ("success", "failed"):
                break
            time.sleep(POLL_S)
        else:
            raise RuntimeError(f"run {run_id} of {dag_id} still {state!r} after {timeout:.0f}s")
        tis = self.request("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances")
        return {ti["task_id"]: str(ti["state"]) for ti in tis["task_instances"]}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int = 1) -> str:
        """A task's log as the UI shows it: one line per event, an exception as its frames and then
        ``Type: message`` (the UI renders the structured ``error_detail`` of a log event that way)."""
        from urllib.parse import quote

        doc = self.request("GET", f"/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}/taskInstances/{task_id}/logs/"
                                  f"{try_number}?full_content=true")
        content = doc.get("content") or []
        if isinstance(content, str):
            return content
        return "\n".join(_log_line(e) for e in content)


def _log_line(entry: Any) -> str:
    if not isinstance(entry, dict):
        return str(entry)
    lines = [str(entry.get("event", ""))]
    for exc in entry.get("error_detail") or []:
        lines += [f"  File {f.get('filename')}, line {f.get('lineno')}, in {f.get('name')}"
                  for f in exc.get("frames", [])]
        lines.append(f"{exc.get('exc_type')}: {exc.get('exc_value')}")
    return "\n".join(lines)
