"""The deploy DAG run by a running Airflow (api-server, scheduler, dag-processor, triggerer; LocalExecutor),
triggered through the REST API the UI uses, on the local stack (S3, Triton, the Kubernetes emulator).

What dag.test() cannot show: tasks authenticated by the shared JWT secret, scheduled by the scheduler into
the GPU pool, the deferred build pod resumed by the real triggerer in a fresh operator, task logs served by
the api-server, and nothing of Airflow listening beyond loopback.
"""

from __future__ import annotations

import os
import subprocess
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import demo_models
from devstack.airflow import AirflowClient, AirflowServer
from devstack.stack import BUCKET, LocalStack
from tests.helpers import DEPLOY_LLM, golden, infer_llm, text_of

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalStack, AirflowServer, AirflowClient]]:
    root = tmp_path_factory.mktemp("running-airflow")
    local = LocalStack(root / "stack").start()
    try:
        env = local.env()
        airflow = AirflowServer(root / "airflow", env={**env, "ROLLOUT_SENSOR_POKE_S": "2"}).start()
        try:
            client = AirflowClient(airflow.url, "admin", airflow.password)
            client.wait_for_dag(DEPLOY_LLM)
            yield local, airflow, client
        finally:
            airflow.stop()
    finally:
        local.stop()


def _summary(client: AirflowClient, run_id: str, task: str) -> str:
    lines = [line for line in client.task_log(DEPLOY_LLM, run_id, task).splitlines() if "SUMMARY" in line]
    assert lines, f"no SUMMARY line in the {task} log of {run_id}"
    return lines[-1]


def test_rest_trigger_deploys_and_the_deferred_build_resumes_in_the_triggerer(
        stack: tuple[LocalStack, AirflowServer, AirflowClient], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from triton_rollout.release.s3 import ReleaseUri, fetch_manifest

    local, _, client = stack
    for key, value in local.env().items():
        monkeypatch.setenv(key, value)
    assert local.triton is not None
    demo_models.publish_demo_releases(BUCKET, tmp_path / "releases", versions=(1,))
    run_id = client.trigger(DEPLOY_LLM, {"version": 1})  # unpausing also starts the current scheduled run
    states = client.wait_for_run(DEPLOY_LLM, run_id)
    assert states["promote"] == "success" and states["announce"] == "success", states
    assert states["build_engine"] == "skipped" and states["rollback"] == "skipped", states
    assert "SUMMARY smoke demo-llm v1: 3 checks passed" in _summary(client, run_id, "smoke")

    # v2 a checkpoint (published now, after the scheduled run): the build pod (deferrable, in the GPU pool)
    # must build it first.
    ckpt = demo_models.publish_demo_checkpoint(BUCKET, tmp_path / "ckpt", 2, prefix="releases")
    engine = ReleaseUri.parse(ckpt).engine_release()
    run_id = client.trigger(DEPLOY_LLM, {"version": 2})
    states = client.wait_for_run(DEPLOY_LLM, run_id)
    assert states["build_engine"] == "success" and states["promote"] == "success", states
    # Resumed from the triggerer in a fresh operator: the result is read through the pod's own args.
    assert f"SUMMARY build demo-llm v2: engine release published at {engine}" in _summary(client, run_id,
                                                                                        "build_engine")
    assert "promoted (previous v1)" in _summary(client, run_id, "promote")
    assert fetch_manifest(engine).kind == "engine"
    assert text_of(infer_llm(local.triton.http_url, 2)) == golden(2)


def test_bad_params_are_refused_by_the_api(stack: tuple[LocalStack, AirflowServer, AirflowClient]) -> None:
    _, _, client = stack
    for bad in ({"version": 0}, {"version": "abc"}):
        with pytest.raises(urllib.error.HTTPError) as info:
            client.request("POST", f"/dags/{DEPLOY_LLM}/dagRuns", {"logical_date": None, "conf": bad})
        assert info.value.code == 400
        assert "version" in info.value.read().decode()


def test_airflow_listens_on_loopback_only(stack: tuple[LocalStack, AirflowServer, AirflowClient]) -> None:
    _, airflow, _ = stack
    pids = set(airflow.pids().values())
    # Every process of each component's group (the api-server's workers, the executor's, the parser's).
    groups = {os.getpgid(pid) for pid in pids}
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout.splitlines()
    ours = [line for line in listening
            if any(f"pid={pid}," in line for pid in _group_members(groups))]
    assert ours, "the api-server should be listening"
    assert all(" 127.0.0.1:" in line for line in ours), ours


def _group_members(groups: set[int]) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) in groups:
                    members.add(int(entry.name))
            except ProcessLookupError:
                continue
    return members
