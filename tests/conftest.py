"""Shared fixtures: one real SeaweedFS S3 server per test session, a fresh bucket per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.s3 import SeaweedS3
from devstack.stack import DEMO_BUILDERS, image_runtime
from devstack.triton import TritonServer


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

ROLLOUT_NS = "triton"
ROLLOUT_SECRET = "triton-rollout-s3"
PROJECT_DAG_FILES = ("triton_deploy.py", "triton_reconcile.py", "models.yaml")


class RolloutStack:
    """What a DAG test needs: publish demo releases, parse the project's DAGs, run them with dag.test()."""

    def __init__(self, dags: Path, bucket: str, pvc: Path, triton: TritonServer, work: Path) -> None:
        self.dags, self.bucket, self.pvc, self.triton, self.work = dags, bucket, pvc, triton, work

    def publish(self, model: str, version: int, variant: str = "good", created_at: object = None) -> str:
        from triton_rollout.release.publish import publish_release

        from devstack import demo_models

        src = demo_models.write_release(model, self.work / f"src-{model}-{version}", version, variant)
        uri = f"s3://{self.bucket}/releases/{model}/{version}"
        publish_release(src, uri, created_at=created_at,  # type: ignore[arg-type]
                        compat=demo_models.release_compat(model))
        return uri

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
    kube_emulator.create_pvc(ROLLOUT_NS, claim, pvc)
    try:
        kube_emulator.create_secret(ROLLOUT_NS, ROLLOUT_SECRET, {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                                                 "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # created by an earlier test of the session
            raise
    from triton_rollout.pvc.layout import PvcLayout

    env = {"ROLLOUT_BUCKET": bucket, "TRITON_URL": triton.http_url, "ROLLOUT_PVC_CLAIM": claim,
           "TRITON_MODEL_REPOSITORY": str(PvcLayout.at(pvc).repository), "KUBECONFIG": str(kube_emulator.kubeconfig),
           "TRITON_ROLLOUT_MODELS": str(airflow_dags / "models.yaml"), "ROLLOUT_SENSOR_POKE_S": "1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return RolloutStack(airflow_dags, bucket, pvc, triton, tmp_path)
