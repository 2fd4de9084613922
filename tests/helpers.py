"""Helpers for tests: release directories with known content, CLI runs, a fault-injecting S3 proxy, Triton
clients and the DAG-test stack (RolloutStack). Shared here, never imported from another test module."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import select
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack import demo_models
from devstack.stack import BUCKET
from devstack.triton import TritonServer

ROOT = Path(__file__).resolve().parents[1]


def make_release_dir(path: Path, *, seed: int = 0, big_mib: int = 0, small: int = 5, model: str = "llm") -> Path:
    """A release tree <model>/config.pbtxt + small files (+ one big file), deterministic per seed."""
    rng = random.Random(seed)
    root = path / model
    (root / "tokenizer").mkdir(parents=True, exist_ok=True)
    (root / "config.pbtxt").write_text(f'name: "{model}"\nbackend: "python"\n# seed {seed}\n')
    for i in range(small):
        (root / "tokenizer" / f"f{i:04d}.json").write_bytes(rng.randbytes(rng.randint(10, 4000)))
    if big_mib:
        block = rng.randbytes(1024 * 1024)
        with open(root / "rank0.engine", "wb") as fh:
            for i in range(big_mib):
                # Distinct blocks, cheap to make: the block with its index in front.
                fh.write(i.to_bytes(8, "little") + block[8:])
    return path


def tree_digest(path: Path) -> dict[str, str]:
    """Relative path -> sha256 of every regular file under path."""
    out = {}
    for p in sorted(path.rglob("*")):
        if p.is_file():
            out[p.relative_to(path).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}:{ROOT / 'plugins'}"
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "triton_rollout", *args], env=env or cli_env(), capture_output=True, text=True,
        timeout=timeout,
    )


def run_kubectl(kubeconfig: Path, namespace: str, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """The real kubectl against ``kubeconfig`` in ``namespace``; ``check``: a non-zero exit fails the test,
    with kubectl's output. A cache dir beside the kubeconfig: discovery is never reused from another server."""
    cmd = ["kubectl", "--kubeconfig", str(kubeconfig), "--cache-dir", str(kubeconfig.parent / "kcache"),
           "-n", namespace, *args]
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}")
    return out


def result_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


class FaultProxy:
    """A loopback TCP proxy in front of S3 that breaks GETs of object data the way S3 and networks do.

    Only GETs whose request line contains ``match`` are touched; everything else passes through untouched.
    The first ``skip`` of them pass (a fault that starts mid-sync), then each is broken with probability
    ``fraction`` (1: a storm of consecutive failures; below 1: throttling spread over the sync) until
    ``failures`` have been broken in all. Modes:

    - "503": answers HTTP 503 SlowDown instead of forwarding (a storm or SlowDown throttling);
    - "reset": forwards, then cuts the connection after ``cut_after`` bytes of the body;
    - "stall": forwards ``cut_after`` bytes of the body, then sends nothing more and keeps the connection
      open until the client gives up and closes it (kserve#5611: downloads that hang forever on this).

    ``cut_after`` None: a random offset within each broken body (``seed`` makes the offsets repeatable).
    ``delay``: seconds every matching GET waits before it is forwarded (a slow store). Counts what it did:
    ``matched`` GETs, ``broken`` of them (``broken_paths``: the path each broken GET asked for), ``body_bytes``
    relayed for matching GETs, ``cuts`` (the offsets).
    """

    MODES = ("503", "reset", "stall")

    def __init__(self, upstream_port: int, *, mode: str, failures: int, match: str,
                 cut_after: int | None = 200_000, fraction: float = 1.0, skip: int = 0, seed: int = 0,
                 delay: float = 0.0) -> None:
        if mode not in self.MODES:
            raise ValueError(f"FaultProxy mode must be one of {self.MODES}, got {mode!r}")
        self.upstream_port = upstream_port
        self.mode = mode
        self.failures = failures
        self.match = match.encode()
        self.cut_after = cut_after
        self.fraction = fraction
        self.skip = skip
        self.delay = delay
        self.matched = 0
        self.broken = 0
        self.broken_paths: list[str] = []
        self.body_bytes = 0
        self.cuts: list[int] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._sock.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _matches(self, head: bytes) -> bool:
        first_line = head.split(b"\r\n", 1)[0]
        return first_line.startswith(b"GET ") and self.match in first_line

    def _should_break(self, head: bytes) -> bool:
        with self._lock:
            self.matched += 1
            if self.matched <= self.skip or self.broken >= self.failures:
                return False
            if self.fraction < 1.0 and self._rng.random() >= self.fraction:
                return False
            self.broken += 1
            self.broken_paths.append(head.split(b" ", 2)[1].split(b"?", 1)[0].decode(errors="replace"))
            return True

    def _cut_for(self, length: int) -> int:
        with self._lock:
            cut = self.cut_after if self.cut_after is not None else self._rng.randrange(max(length, 1))
            self.cuts.append(cut)
            return cut

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        try:
            while True:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                # GETs carry no body; other methods are forwarded with theirs via a plain pipe.
                if not head.startswith(b"GET "):
                    self._pipe_rest(client, upstream, head)
                    return
                matching = self._matches(head)
                breaking = matching and self._should_break(head)
                if matching and self.delay:
                    time.sleep(self.delay)
                if breaking and self.mode == "503":
                    body = b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"
                    client.sendall(b"HTTP/1.1 503 Slow Down\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                    continue
                upstream.sendall(head)
                if not self._relay_response(upstream, client, breaking, matching):
                    return
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def _relay_response(self, upstream: socket.socket, client: socket.socket, breaking: bool, matching: bool) -> bool:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = upstream.recv(65536)
            if not chunk:
                return False
            head += chunk
        header, _, rest = head.partition(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        cut = self._cut_for(length) if breaking else None
        sent = 0
        client.sendall(header + b"\r\n\r\n")
        data = rest
        while True:
            if cut is not None and sent + len(data) > cut:
                client.sendall(data[: max(cut - sent, 0)])
                self._count(matching, max(cut - sent, 0))
                if self.mode == "stall":
                    self._hold(client)
                else:
                    client.shutdown(socket.SHUT_RDWR)
                return False
            client.sendall(data)
            self._count(matching, len(data))
            sent += len(data)
            if sent >= length:
                return True
            data = upstream.recv(min(1 << 20, length - sent))
            if not data:
                return False

    def _count(self, matching: bool, nbytes: int) -> None:
        if matching:
            with self._lock:
                self.body_bytes += nbytes

    def _hold(self, client: socket.socket) -> None:
        """Send nothing and keep the connection open until the client closes it (or the proxy stops)."""
        while not self._stop.is_set():
            readable, _, _ = select.select([client], [], [], 0.1)
            if readable and not client.recv(65536):
                return

    def _pipe_rest(self, client: socket.socket, upstream: socket.socket, head: bytes) -> None:
        upstream.sendall(head)

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=pump, args=(client, upstream), daemon=True)
        t.start()
        pump(upstream, client)
        t.join(timeout=5)


class RepositoryWatcher(threading.Thread):
    """Polls repository/llm/<v>/ and records any moment it exists without all its files at full size."""

    def __init__(self, version_dir: Path, expected_sizes: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.version_dir = version_dir
        self.expected = expected_sizes
        self.violations: list[str] = []
        self.seen_complete = 0
        self.stop = threading.Event()
        self.paused = threading.Lock()  # held by the test while it deletes a PVC on purpose

    def run(self) -> None:
        while not self.stop.is_set():
            with self.paused:
                self._check()
            time.sleep(0.002)

    def _check(self) -> None:
        if self.version_dir.exists():
            try:
                sizes = {
                    p.relative_to(self.version_dir).as_posix(): p.stat().st_size
                    for p in self.version_dir.rglob("*") if p.is_file()
                }
            except FileNotFoundError as exc:
                self.violations.append(f"file vanished from a published version: {exc.filename}")
                return
            if sizes != self.expected:
                missing = sorted(set(self.expected) - set(sizes))[:3]
                self.violations.append(f"partial version visible: missing {missing}, {len(sizes)} files")
            else:
                self.seen_complete += 1


# -- Triton clients and golden answers of the demo models ---------------------------------------------

LLM = demo_models.LLM_MODEL


DEPLOY_LLM = f"deploy_{LLM}"
# The model whose deploys S3 events start on the local stack (devstack.stack.EVENT_MODELS).
DEPLOY_TENSOR = f"deploy_{demo_models.TENSOR_MODEL}"


def infer_llm(base_url: str, version: int, prompt: str = "the ", max_tokens: int = 12) -> dict[str, Any]:
    """The conventional endpoint /v2/models/{name}/versions/{version}/infer, with BYTES/INT32 JSON inputs."""
    body = {"inputs": [
        {"name": "text_input", "shape": [1], "datatype": "BYTES", "data": [prompt]},
        {"name": "max_tokens", "shape": [1], "datatype": "INT32", "data": [max_tokens]},
    ]}
    req = urllib.request.Request(f"{base_url}/v2/models/ensemble/versions/{version}/infer",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def output(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    """Task logs so far (pod output reaches stdout, operator logs the logging handlers), then reset."""
    text = capfd.readouterr().out + "\n" + caplog.text
    caplog.clear()
    return text


def golden(version: int) -> str:
    return demo_models.llm_generate(demo_models.bigram_table(version), "the ", 12)


def text_of(answer: dict[str, Any]) -> str:
    (out,) = [o for o in answer["outputs"] if o["name"] == "text_output"]
    return str(out["data"][0])


def until(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    """``check()``'s first truthy value, polled every 0.1 s; fails naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


class ClientLoop:
    """Sends requests back to back from a thread and counts what failed (the availability measurement)."""

    def __init__(self, send: Callable[[], Any]) -> None:
        self.send = send
        self.ok = 0
        self.failed: list[str] = []
        self.answers: list[Any] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(self.send())
                self.ok += 1
            except Exception as exc:
                self.failed.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> ClientLoop:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def post(url: str, payload: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return dict(json.loads(resp.read()))


def llm_request(server: TritonServer) -> dict[str, Any]:
    return post(f"{server.http_url}/v2/models/ensemble/generate", {"text_input": "the ", "max_tokens": 12})



# -- the project's DAGs on the real local stack (S3, Triton, the Kubernetes emulator) --------------------

ROLLOUT_NS = "triton"


ROLLOUT_SECRET = "triton-rollout-s3"


PROJECT_DAG_FILES = ("triton_deploy.py", "triton_reconcile.py", "models.yaml")


class RolloutStack:
    """What a DAG test needs: publish demo releases, parse the project's DAGs, run them with dag.test()."""

    def __init__(self, dags: Path, bucket: str, pvc: Path, triton: TritonServer, work: Path) -> None:
        self.dags, self.bucket, self.pvc, self.triton, self.work = dags, bucket, pvc, triton, work

    def publish(self, model: str, version: int, variant: str = "good", created_at: Any = None) -> str:
        return demo_models.publish_version(self.bucket, self.work / "src", model, version, variant=variant,
                                           created_at=created_at, source=f"test {variant} release")

    def dag(self, dag_id: str):  # type: ignore[no-untyped-def]
        from airflow.models import DagBag

        file = "triton_reconcile.py" if dag_id.startswith("reconcile") else "triton_deploy.py"
        bag = DagBag(dag_folder=str(self.dags / file))
        assert not bag.import_errors, bag.import_errors
        return bag.dags[dag_id]

    def run(self, dag_id: str, logical_date: object = None, **conf: object):  # type: ignore[no-untyped-def]
        """One dag.test() run; returns (dag run, {task_id: state})."""
        dag = self.dag(dag_id)
        kwargs = {"logical_date": logical_date} if logical_date is not None else {}
        dr = dag.test(run_conf=conf or None, **kwargs)
        return dr, {ti.task_id: str(ti.state) for ti in dr.get_task_instances()}



@contextlib.contextmanager
def environment(values: dict[str, str]) -> Any:
    """``values`` set in os.environ for the block, then restored (the library reads the standard AWS
    variables, so this points it at one S3 for the block without touching the session's other one)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# How long the running Airflow's failed step pods are kept (kubernetes.failed_pod_retention_s) in tests.
RUNNING_AIRFLOW_POD_RETENTION_S = 20


class RunningAirflow:
    """The session's running Airflow (api-server, scheduler, dag-processor, triggerer) on its own local
    stack (S3, Triton, the Kubernetes emulator), shared by every test that needs one (tests/conftest.py).

    The tests share its bucket and its Triton: each publishes the next version of a model
    (:meth:`next_version`) instead of assuming which ones exist, so they pass in any order."""

    def __init__(self, local: Any, server: Any, client: Any, work: Path) -> None:
        self.local = local
        self.server = server
        self.client = client
        self.work = work

    @property
    def env(self) -> dict[str, str]:
        return dict(self.local.env())

    @property
    def triton_url(self) -> str:
        return str(self.local.triton.http_url)

    def next_version(self, model: str = demo_models.LLM_MODEL, prefix: str = "releases") -> int:
        from triton_rollout.release.s3 import list_release_versions, make_client

        with environment(self.env):
            versions = list_release_versions(make_client(), BUCKET, f"{prefix}/{model}")
        return max(versions, default=0) + 1

    def publish(self, version: int, *, model: str = demo_models.LLM_MODEL, variant: str = "good",
                created_at: Any = None) -> str:
        """Publish a demo release (manifest last) to the stack's bucket; returns its URI."""
        with environment(self.env):
            return demo_models.publish_version(BUCKET, self.work, model, version, variant=variant,
                                               created_at=created_at, source=f"test {variant} release")

    def publish_checkpoint(self, version: int) -> str:
        with environment(self.env):
            return demo_models.publish_demo_checkpoint(BUCKET, self.work / "ckpt", version, prefix="releases")

    def first_deploy_by_the_scheduler(self, timeout: float = 300.0) -> None:
        """Publish v1 and unpause the deploy DAG: the scheduled run that unpausing creates deploys it. Done
        once, before any test: a scheduled run starting beside a test's backfill would run at the same time
        (a backfill's runs are not held back by the DAG's max_active_runs)."""
        import time

        self.publish(self.next_version())
        self.client.unpause(DEPLOY_LLM)
        deadline = time.monotonic() + timeout
        while not self.client.runs(DEPLOY_LLM, run_type="scheduled"):
            assert time.monotonic() < deadline, "unpausing the deploy DAG created no scheduled run"
            time.sleep(1)
        self.client.wait_until_idle(DEPLOY_LLM, timeout=timeout)

    def watch_s3_events(self) -> None:
        """Unpause the event-started model's DAG and ask for a re-parse of its file (the REST API's
        parseDagFile, as the UI's "Reparse Dag" button): its AssetWatcher is registered at that parse
        (assets of paused DAGs get none), seconds later instead of up to min_file_process_interval (60 s).
        Done at session start, so even that overlaps the first deploy."""
        self.client.unpause(DEPLOY_TENSOR)
        token = self.client.request("GET", f"/dags/{DEPLOY_TENSOR}")["file_token"]
        self.client.request("PUT", f"/parseDagFile/{token}")

    def wait_for_event_watcher(self, timeout: float = 180.0) -> str:
        """Until the triggerer runs the SQS watcher of the event-started model; returns its queue URL."""
        from devstack.stack import events_queue_variable

        queue = self.env[events_queue_variable(demo_models.TENSOR_MODEL)]
        self.server.wait_for_sqs_watcher(queue, timeout)
        return queue

    def deploy(self, conf: dict[str, Any] | None = None, dag_id: str = DEPLOY_LLM) -> tuple[str, dict[str, str]]:
        """Trigger a run (as the UI's form without a date) and wait for it; returns (run id, task states)."""
        run_id = self.client.trigger(dag_id, conf)
        return run_id, self.client.wait_for_run(dag_id, run_id)

    def kubectl(self, *args: str) -> str:
        """The real kubectl against the stack's Kubernetes API (the emulator)."""
        proc = subprocess.run(["kubectl", "--kubeconfig", self.env["KUBECONFIG"], *args], capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, f"kubectl {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def summary(self, dag_id: str, run_id: str, task: str) -> str:
        lines = [line for line in self.client.task_log(dag_id, run_id, task).splitlines() if "SUMMARY" in line]
        assert lines, f"no SUMMARY line in the {task} log of {run_id}"
        return str(lines[-1])


# -- the Airflow UI in a real browser: Debian's chromium (make system-deps), headless, through Playwright ---

UI_TIMEOUT_MS = 60_000


@contextlib.contextmanager
def chromium() -> Any:
    """A headless chromium (playwright Browser), closed at the end of the block."""
    import shutil

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                    args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Any, url: str, password: str, path: str = f"/dags/{DEPLOY_LLM}") -> None:
    """Open ``path`` in the UI as a person does: SimpleAuthManager shows its login page first; sign in as the
    admin and land on ``path``."""
    from devstack.airflow import USERNAME

    page.goto(f"{url}{path}")
    page.wait_for_url("**/auth/login**")
    page.get_by_label("Username").fill(USERNAME)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}", timeout=UI_TIMEOUT_MS)


@dataclass
class SecretScan:
    """Where :func:`scan_for_secrets` looked and what it found: (secret, place, context) per leak."""

    secrets: int
    places: int
    task_logs: int
    pod_logs: int
    pages: int
    leaks: list[tuple[str, str, str]]

    def describe(self) -> str:
        return (f"scanned {self.places} logs, pages, XComs, notifications and manifests ({self.task_logs} task "
                f"logs, {self.pod_logs} pod logs, {self.pages} API pages) for {self.secrets} secrets: "
                f"{len(self.leaks)} leaks")


def scan_for_secrets(af: RunningAirflow, notifications: list[Any]) -> SecretScan:
    """Looks for the S3 secret key (in the aws_default connection and the pods' Secret), Airflow's JWT secret
    and the metadata database's password in every task log, component log, pod log, XCom, API or UI page,
    notification body and rendered manifest of ``af``'s session. Their legitimate stores are not scanned: the
    connection and the Secret themselves, the database, the kubeconfigs and the generated files in AIRFLOW_HOME."""
    repo = Path(__file__).resolve().parent.parent
    secrets = {"S3 secret key": af.local.s3.secret_key,
               "JWT secret": (af.server.home / "jwt_secret").read_text().strip()}
    if af.server.database is not None:
        secrets["database password"] = af.server.database.password
    assert all(len(value) >= 12 for value in secrets.values()), "a short value would match by chance"
    # The values searched for are the ones in use: the connection Airflow imported holds the S3 key.
    assert secrets["S3 secret key"] in (af.server.home / "connections.json").read_text()

    texts: dict[str, str] = {}
    for folder, pattern in ((af.server.home / "logs", "**/*"), (af.server.log_dir, "*.log"),
                            (af.local.root / "kube", "**/*.log"), (repo / "k8s", "**/*.yaml"),
                            (repo / "k8s-overlays", "**/*.yaml"), (repo / "kubeflow", "*.yaml")):
        for path in folder.glob(pattern):
            if path.is_file():
                texts[str(path)] = path.read_text(errors="replace")
    logs = [p for p in texts if p.startswith(str(af.server.home / "logs"))]
    pod_logs = [p for p in texts if p.startswith(str(af.local.root / "kube"))]

    client = af.client
    pages = ["/dags", "/connections", "/variables", "/pools", "/importErrors", "/config"]
    for dag_id in (DEPLOY_LLM, DEPLOY_TENSOR):
        for run in client.runs(dag_id):
            base = f"/dags/{dag_id}/dagRuns/{run['dag_run_id']}"
            pages.append(base)
            for ti in client.request("GET", f"{base}/taskInstances")["task_instances"]:
                task = f"{base}/taskInstances/{ti['task_id']}"
                pages.append(task)
                for entry in client.request("GET", f"{task}/xcomEntries")["xcom_entries"]:
                    pages.append(f"{task}/xcomEntries/{entry['key']}")
    for page in pages:
        try:
            texts[f"GET /api/v2{page}"] = json.dumps(client.request("GET", page))
        except urllib.error.HTTPError as exc:  # e.g. /config is off by default: its refusal is scanned too
            texts[f"GET /api/v2{page}"] = f"{exc.code} {exc.read().decode(errors='replace')}"
    for path in ("/triton-models/", "/triton-models/fleet.json"):
        texts[f"GET {path}"] = client.get_text(path)
    for i, body in enumerate(notifications):
        texts[f"notification {i}"] = json.dumps(body)

    leaks = [(what, where, text[max(0, text.find(value) - 80):text.find(value) + 20])
             for where, text in texts.items() for what, value in secrets.items() if value in text]
    return SecretScan(secrets=len(secrets), places=len(texts), task_logs=len(logs), pod_logs=len(pod_logs),
                      pages=len(pages), leaks=leaks)


def tensor_version_by_hand(layout: Any, work: Path, version: int, variant: str = "good") -> None:
    """A demo-tensor version written straight into the PVC's repository/ (no S3, no sync): for Triton step tests."""
    from devstack import demo_models

    src = demo_models.write_tensor_release(work / f"src{version}", version, variant)
    dest = layout.version_dir("demo_tensor", version)
    dest.mkdir(parents=True)
    for f in (src / "demo_tensor").iterdir():
        (dest / f.name).write_bytes(f.read_bytes())
