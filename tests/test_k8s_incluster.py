"""Deferred pods as Airflow on a cluster runs them: in-cluster config, as the triggerer's own ServiceAccount.

The project's deploy DAG (from dags/models.yaml, with no KUBECONFIG, as on a cluster) defers its build task;
the provider's KubernetesPodTrigger is rebuilt from its serialized form, as the triggerer does, and run in a
subprocess whose environment is a pod's: KUBERNETES_SERVICE_HOST/PORT name the emulator's TLS port, and a
TokenRequest token of ServiceAccount airflow/airflow-triggerer and the emulator's CA lie where the
in-cluster loaders read them. The emulator enforces k8s/rbac.yaml, so the trigger reads the pod only as an
identity the rendered RBAC grants it (apache/airflow#44325: the async hook has no in-cluster fallback).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from triton_rollout.airflow.factory import load_config

from devstack.kube import KubeEmulator
from devstack.stack import AIRFLOW_IDENTITY, RBAC_MANIFEST, apply_manifest
from tests.helpers import cli_env

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "dags" / "models.yaml"
TRIGGERER = (AIRFLOW_IDENTITY[0], "airflow-triggerer")  # the Helm chart's triggerer ServiceAccount

# Runs in the subprocess: argv = service-account folder, pod name, pod namespace.
TRIGGERER_SCRIPT = r'''
import asyncio, importlib, json, sys

sa_dir, pod_name, namespace = sys.argv[1:4]
# Only in this process: the in-cluster loaders of both kubernetes clients read the token and the CA from
# /var/run/secrets/kubernetes.io/serviceaccount (module constants, looked up at each load), which a test
# cannot write; the host and port come from the environment, as in a pod.
from kubernetes.config import incluster_config as sync_incluster
from kubernetes_asyncio.config import incluster_config as async_incluster

for module in (sync_incluster, async_incluster):
    module.SERVICE_TOKEN_FILENAME = f"{sa_dir}/token"
    module.SERVICE_CERT_FILENAME = f"{sa_dir}/ca.crt"

from airflow.providers.common.compat.sdk import TaskDeferred
from kubernetes.client import models as k8s
from triton_rollout.airflow.factory import deploy_dags

dag = next(d for d in deploy_dags().values() if d.dag_id == "deploy_demo-llm")
build = dag.get_task("build_engine")
build.pod = k8s.V1Pod(metadata=k8s.V1ObjectMeta(name=pod_name, namespace=namespace))  # as execute() leaves it
try:
    worker = build.client.read_namespaced_pod(pod_name, namespace).status.phase  # the worker's own hook
except Exception as exc:
    worker = f"error: {exc}"
try:
    build.invoke_defer_method()
    raise SystemExit("the operator did not defer")
except TaskDeferred as deferred:
    classpath, kwargs = deferred.trigger.serialize()
module, name = classpath.rsplit(".", 1)
trigger = getattr(importlib.import_module(module), name)(**kwargs)  # what the triggerer runs


async def first_event():
    async for event in trigger.run():
        return event.payload


print(json.dumps({"worker": worker, "kwargs": kwargs, "event": asyncio.run(first_event())}, default=str))
'''


@pytest.fixture()
def finished_pod(kube_emulator: KubeEmulator, namespace: str) -> Iterator[str]:
    """A pod that ran to completion, created by the admin; its container is named as KubernetesPodOperator
    names the step container. Deleted at the end."""
    emu = kube_emulator
    name = f"incluster-{uuid.uuid4().hex[:6]}"
    emu.post(f"/api/v1/namespaces/{namespace}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "base", "image": "example/sync:1", "command": ["python", "-c", "print('built')"]}]}})
    v1 = emu.core_v1()
    deadline = time.monotonic() + 30
    while v1.read_namespaced_pod(name, namespace).status.phase != "Succeeded":
        assert time.monotonic() < deadline, v1.read_namespaced_pod(name, namespace).status
        time.sleep(0.2)
    try:
        yield name
    finally:
        v1.delete_namespaced_pod(name, namespace)
        v1.api_client.close()


def as_triggerer_in_a_pod(emu: KubeEmulator, account: tuple[str, str], pod: str, namespace: str,
                          tmp_path: Path) -> dict[str, Any]:
    """The trigger the deploy DAG's build task defers to, run in a pod-like environment as ``account``."""
    kubeconfig = json.loads(emu.service_account_kubeconfig(*account, path=tmp_path / "sa-kubeconfig").read_text())
    sa_dir = tmp_path / "serviceaccount"
    sa_dir.mkdir()
    (sa_dir / "token").write_text(kubeconfig["users"][0]["user"]["token"])
    (sa_dir / "ca.crt").write_bytes((emu.state_dir / "apiserver.crt").read_bytes())
    home = tmp_path / "home"  # no ~/.kube/config to fall back on
    home.mkdir()
    env = cli_env(HOME=str(home), KUBERNETES_SERVICE_HOST="127.0.0.1", KUBERNETES_SERVICE_PORT=str(emu.tls_port),
                  TRITON_ROLLOUT_MODELS=str(MODELS))
    env.pop("KUBECONFIG", None)
    proc = subprocess.run([sys.executable, "-c", TRIGGERER_SCRIPT, str(sa_dir), pod, namespace], env=env,
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture()
def namespace(kube_emulator: KubeEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("TRITON_ROLLOUT_MODELS", str(MODELS))
    model = load_config().model("demo-llm")
    apply_manifest(kube_emulator, RBAC_MANIFEST)  # what a platform team applies (k8s/rbac.yaml)
    return model.kubernetes.namespace


@pytest.mark.slow  # a subprocess importing Airflow, ~6 s
def test_the_triggerer_reads_a_deferred_pod_in_cluster_as_its_own_service_account(
        kube_emulator: KubeEmulator, namespace: str, finished_pod: str, tmp_path: Path) -> None:
    pod = finished_pod
    out = as_triggerer_in_a_pod(kube_emulator, TRIGGERER, pod, namespace, tmp_path)
    assert out["event"]["status"] == "success", out["event"]
    assert (out["event"]["name"], out["event"]["namespace"]) == (pod, namespace)
    assert out["worker"] == "Succeeded"  # the worker's sync hook, in-cluster as well
    # The trigger carries in-cluster and no kubeconfig besides, and the build pod's two start-up waits.
    assert out["kwargs"]["in_cluster"] is True and out["kwargs"]["config_dict"] is None
    kube = load_config().model("demo-llm").kubernetes
    assert kube.api.in_cluster is True
    assert out["kwargs"]["schedule_timeout"] == kube.build_start_timeouts.schedule_s
    assert out["kwargs"]["startup_timeout"] == kube.build_start_timeouts.startup_s


@pytest.mark.slow  # a subprocess importing Airflow, ~6 s
def test_an_account_the_rbac_does_not_bind_is_refused(kube_emulator: KubeEmulator, namespace: str,
                                                      finished_pod: str, tmp_path: Path) -> None:
    """The same run as an identity k8s/rbac.yaml grants nothing: the API's 403 names it, so the test above
    passed through the triggerer's RoleBinding, not around RBAC."""
    out = as_triggerer_in_a_pod(kube_emulator, (AIRFLOW_IDENTITY[0], "unbound"), finished_pod, namespace,
                                tmp_path)
    assert out["event"]["status"] == "error"
    user = f"system:serviceaccount:{AIRFLOW_IDENTITY[0]}:unbound"
    assert f'User \\"{user}\\" cannot get resource \\"pods\\"' in out["event"]["message"], out["event"]
    assert "forbidden" in out["worker"].lower()


def test_the_triggerer_may_watch_and_delete_pods_but_never_create_them(kube_emulator: KubeEmulator,
                                                                       namespace: str) -> None:
    """Least privilege: the triggerer reads deferred pods, their log and events, and deletes a cancelled
    task's pod; only the worker creates and patches them."""
    from kubernetes import client, config

    authz = client.AuthorizationV1Api(config.new_client_from_config(config_file=str(kube_emulator.kubeconfig)))

    def allowed(verb: str, resource: str, subresource: str = "") -> bool:
        review = client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=f"system:serviceaccount:{TRIGGERER[0]}:{TRIGGERER[1]}",
            groups=["system:serviceaccounts", "system:authenticated"],
            resource_attributes=client.V1ResourceAttributes(namespace=namespace, verb=verb, resource=resource,
                                                            subresource=subresource or None)))
        return bool(authz.create_subject_access_review(review).status.allowed)

    try:
        for verb, resource, sub in [("get", "pods", ""), ("list", "pods", ""), ("watch", "pods", ""),
                                    ("delete", "pods", ""), ("get", "pods", "log"), ("list", "events", ""),
                                    ("watch", "events", "")]:
            assert allowed(verb, resource, sub), (verb, resource, sub)
        assert not allowed("create", "pods") and not allowed("patch", "pods")
        assert not allowed("get", "secrets")
    finally:
        authz.api_client.close()
