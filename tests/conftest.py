"""Shared fixtures: one real SeaweedFS S3 server per test session, a fresh bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.receiver import Receiver
from devstack.s3 import SeaweedS3
from devstack.stack import DEMO_BUILDERS, PVC_OWNER, SERVICE_ACCOUNT, airflow_kubeconfig, image_runtime
from devstack.triton import TritonServer
from tests.helpers import (
    PROJECT_DAG_FILES,
    ROLLOUT_NS,
    ROLLOUT_SECRET,
    RUNNING_AIRFLOW_POD_RETENTION_S,
    RolloutStack,
    RunningAirflow,
)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs")).start()
    saved = {k: os.environ.get(k) for k in server.env()}
    # The library reads the standard AWS variables, exactly as a pod would.
    os.environ.update(server.env())
    try:
        yield server
    finally:
        server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture()
def s3_client(s3_server: SeaweedS3):  # type: ignore[no-untyped-def]
    from triton_rollout.release.s3 import make_client

    return make_client()


@pytest.fixture()
def bucket(s3_client) -> str:  # type: ignore[no-untyped-def]
    name = f"t-{uuid.uuid4().hex[:12]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture()
def pvc(tmp_path: Path) -> Path:
    path = tmp_path / "pvc"
    path.mkdir()
    return path


# -- Triton: the real tritonserver from the nvidia-pytriton wheel (make triton-server installs it) --------


@pytest.fixture(scope="session")
def triton_install() -> Path:
    """The unpacked server, installed once per machine (idempotent: a stamp check when present)."""
    from devstack.triton import install

    return install()


@pytest.fixture()
def triton(triton_install: Path, pvc: Path, tmp_path: Path) -> Iterator[TritonServer]:
    """A tritonserver serving this test's PVC repository/ (explicit mode). Starting one takes ~0.1 s,
    so each test gets its own and no loaded model leaks between tests; stopped (group, SIGKILL fallback)
    at the end."""
    from triton_rollout.pvc.layout import PvcLayout

    layout = PvcLayout.at(pvc)
    server = TritonServer(layout.repository, tmp_path / "triton-log", install_dir=triton_install).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def kube_emulator(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """The Kubernetes API emulator (devstack.kube): one CPU node, no GPUs; pods run the project's venv
    with devstack's demo builder (devstack.stack.image_runtime).

    Tests add what they need through it: ``create_pvc(ns, claim, host_folder)``, ``create_secret(...)``.
    """
    from devstack.kube import KubeEmulator

    emulator = KubeEmulator(tmp_path_factory.mktemp("kube-emulator"), images=[image_runtime()]).start()
    try:
        yield emulator
    finally:
        emulator.stop()


# -- Airflow: one AIRFLOW_HOME and SQLite DB per session, shared by every test that runs DAGs ------------


_AIRFLOW_HOME: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--chaos", action="store_true", default=False,
                     help="also collect tests/chaos/ (the faults suite of `make chaos`; not part of `make test`)")


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    # The faults suite runs minutes of kills and storms: `make chaos` only, outside the test budget.
    if collection_path.name == "chaos" and collection_path.parent == Path(__file__).parent:
        return not config.getoption("--chaos")
    return None


def pytest_configure(config: pytest.Config) -> None:
    """A private AIRFLOW_HOME for the whole session, set before anything imports Airflow (its config is
    read once, at import): tests never touch `make up`'s home or the project's airflow.cfg."""
    import sys
    import tempfile

    # The CPU demo builder (backend cpu-demo) for every spec the tests validate or build: in-process, in
    # the DAG parse and in the CLI subprocesses (tests.helpers.cli_env copies this environment).
    os.environ.update(DEMO_BUILDERS)
    if "airflow.configuration" in sys.modules:
        return
    home = tempfile.mkdtemp(prefix="airflow-home-")
    _AIRFLOW_HOME.append(home)
    os.environ["AIRFLOW_HOME"] = home
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    # A temporary dags folder: tests write their own DAG files there or link the project's.
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(home) / "dags")
    os.environ.pop("AIRFLOW_CONFIG", None)


# Files whose tests measure timing against real servers (client loops that must see 0 failures through a rollout,
# kubelet probes, racing syncs): make test runs them after the parallel part, alone on the machine. In one trial
# run beside other tests on 2 cores, fleet replicas missed probes and restarted mid-rollout, and two racing syncs
# no longer overlapped.
SERIAL_FILES = {"test_triton_fleet", "test_k8s_fleet", "test_ui_fleet", "test_triton_rollout", "test_sync",
                "test_sync_kill", "test_k8s_probes", "test_k8s_restarts"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under `pytest -n 2 --dist loadgroup` (make test): every file's tests on one worker, so a module's fixtures
    (a Triton fleet, a stack) start once; every test of the session's running Airflow on one worker, so only one
    starts. Without xdist the groups do nothing. ``serial``: the files make test runs alone (SERIAL_FILES)."""
    for item in items:
        if item.path.stem in SERIAL_FILES:
            item.add_marker(pytest.mark.serial)
        if item.get_closest_marker("xdist_group") is None:
            uses_airflow = "running_airflow" in getattr(item, "fixturenames", ())
            item.add_marker(pytest.mark.xdist_group("running_airflow" if uses_airflow else item.path.stem))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A `--chaos` session writes the faults table (tests/chaos/results/chaos.md) from what its tests counted."""
    if not session.config.getoption("--chaos"):
        return
    from tests.chaos.ledger import LEDGER

    table = LEDGER.write()
    if table is not None:
        print(f"\nfaults table: {table}\n{table.read_text()}")


def pytest_unconfigure(config: pytest.Config) -> None:
    import shutil

    for home in _AIRFLOW_HOME:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def airflow_dags() -> Path:
    """The session's AIRFLOW_HOME with a migrated SQLite DB (once per session); returns its dags folder."""
    import subprocess
    import sys

    from airflow.configuration import AIRFLOW_HOME, conf

    dags = Path(conf.get("core", "dags_folder"))
    dags.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True,
                   env={**os.environ, "AIRFLOW_HOME": AIRFLOW_HOME}, timeout=240)
    return dags


# -- the project's DAGs on the real local stack (S3, Triton, the Kubernetes emulator) --------------------


@pytest.fixture()
def rollout(airflow_dags: Path, kube_emulator, s3_server: SeaweedS3, bucket: str, pvc: Path,  # type: ignore[no-untyped-def]
            triton: TritonServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RolloutStack:
    """The project's DAG files and models.yaml linked into the session's dags folder, pointed (through
    the environment, as `make up` does) at this test's bucket, PVC (an emulator claim) and Triton."""
    import urllib.error

    repo_dags = Path(__file__).resolve().parents[1] / "dags"
    for name in PROJECT_DAG_FILES:
        link = airflow_dags / name
        if not link.exists():
            link.symlink_to(repo_dags / name)
    claim = f"repo-{uuid.uuid4().hex[:8]}"
    # As devstack.stack does: the pods' ServiceAccount, and the claim's folder owned by the pods' user.
    kube_emulator.create_pvc(ROLLOUT_NS, claim, pvc, owner=PVC_OWNER)
    kube_emulator.create_service_account(ROLLOUT_NS, SERVICE_ACCOUNT)
    try:
        kube_emulator.create_secret(ROLLOUT_NS, ROLLOUT_SECRET, {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                                                 "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # created by an earlier test of the session
            raise
    from triton_rollout.pvc.layout import PvcLayout

    env = {"ROLLOUT_BUCKET": bucket, "TRITON_URL": triton.http_url, "ROLLOUT_PVC_CLAIM": claim,
           "TRITON_MODEL_REPOSITORY": str(PvcLayout.at(pvc).repository),
           # The DAGs' pods are launched as the ServiceAccount k8s/rbac.yaml binds, not as the admin.
           "KUBECONFIG": str(airflow_kubeconfig(kube_emulator)),
           "TRITON_ROLLOUT_MODELS": str(airflow_dags / "models.yaml"), "ROLLOUT_SENSOR_POKE_S": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return RolloutStack(airflow_dags, bucket, pvc, triton, tmp_path)


# -- a running Airflow (the four components) on its own local stack: one per session --------------------


@pytest.fixture(scope="session")
def notify_receiver() -> Iterator[Receiver]:
    """The webhook the running Airflow's failure and rollback notifications reach (devstack.receiver)."""
    with Receiver() as receiver:
        yield receiver


# A cluster policy for the session's Airflow only (airflow_local_settings.py in AIRFLOW_HOME/config, which
# Airflow puts on sys.path; applied as the dag-processor and the workers parse the DAGs): a retry waits 1 s
# instead of the DAG's retry_delay (30 s). The tests check that a retry happens and what it reports, not how
# long Airflow waits before it.
RETRY_SOON_POLICY = """\
from datetime import timedelta

RETRY_DELAY = timedelta(seconds=1)


def task_policy(task):
    if task.retry_delay > RETRY_DELAY:
        task.retry_delay = RETRY_DELAY
"""


def _retry_soon_policy(home: Path) -> None:
    (home / "config").mkdir(parents=True, exist_ok=True)
    (home / "config" / "airflow_local_settings.py").write_text(RETRY_SOON_POLICY)


@pytest.fixture(scope="session")
def running_airflow(tmp_path_factory: pytest.TempPathFactory, notify_receiver: Receiver) -> Iterator[RunningAirflow]:
    """S3 + Triton + the Kubernetes emulator + Airflow's api-server, scheduler, dag-processor and
    triggerer (devstack.airflow), as `make up` starts them; stopped at the end of the session.
    Notifications go to ``notify_receiver`` (its connection and the notify settings in the environment)."""
    from devstack.airflow import USERNAME, AirflowClient, AirflowServer
    from devstack.stack import LocalStack

    root = tmp_path_factory.mktemp("running-airflow")
    local = LocalStack(root / "stack").start()
    try:
        # S3 reaches the Airflow side only through the aws_default connection (the pods keep their Secret).
        # The schedule is monthly, at midnight on the 1st: no scheduled run starts during a session (one
        # would hold max_active_runs=1 while it waits), and backfills have whole past months to replay.
        # The scheduler looks for the next task every 0.2 s when idle instead of every 1 s: each of a deploy's
        # eight tasks otherwise starts up to a second after the one before it ends. The dag-processor keeps
        # airflow.cfg's 60 s between parses: the S3-event watcher comes from a parse request (watch_s3_events).
        home = root / "airflow"
        _retry_soon_policy(home)
        server = AirflowServer.for_stack(local, home, ROLLOUT_SENSOR_POKE_S="2",
                                         AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME="0.2",
                                         ROLLOUT_SCHEDULE="0 0 1 * *", ROLLOUT_SENSOR_TIMEOUT_S="60",
                                         ROLLOUT_FAILED_POD_RETENTION_S=str(RUNNING_AIRFLOW_POD_RETENTION_S),
                                         **notify_receiver.airflow_env()).start()
        try:
            client = AirflowClient(server.url, USERNAME, server.password)
            for dag_id in ("deploy_demo-llm", "reconcile_triton_models"):
                client.wait_for_dag(dag_id)
            airflow = RunningAirflow(local, server, client, root / "work")
            airflow.watch_s3_events()
            airflow.first_deploy_by_the_scheduler()
            yield airflow
        finally:
            server.stop()
    finally:
        local.stop()
