"""KubernetesPodOperator, unchanged, against the API emulator, through real Airflow runs (dag.test()).

Each test writes a tiny DAG file (the DAG must live in the dags folder to be serialized) whose pod spec
comes from the library's builders, runs it in-process, and checks the run, the task log (captured from
the process output), the PVC and the pods left in the emulator.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from triton_rollout.config import AwsCredentials, KubernetesConfig, ModelDeployment, ResourceSpec
from triton_rollout.kube.specs import build_pod, step_pod, to_dict
from triton_rollout.release.s3 import ReleaseUri
from triton_rollout.steps import BuildRequest, StatusRequest, SyncRequest

from devstack.kube import KubeEmulator

pytestmark = pytest.mark.slow
NS = "triton"

DAG_TEMPLATE = '''
import json
import pathlib

import pendulum
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
from airflow.sdk import DAG

spec = json.loads(pathlib.Path(__file__).with_suffix(".json").read_text())
with DAG(spec["dag_id"], schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False):
    KubernetesPodOperator(
        task_id="pod",
        full_pod_spec=PodGenerator.deserialize_model_dict(spec["pod"]),
        **spec["kpo"],
    )
'''


@pytest.fixture()
def k8s(kube_emulator: KubeEmulator) -> Iterator[Any]:
    v1 = kube_emulator.core_v1()
    kube_emulator.create_namespace(NS)
    kube_emulator.create_service_account(NS, KubernetesConfig().service_account)  # pods are refused without it
    yield v1
    v1.api_client.close()


def run_pod_dag(dags: Path, emulator: KubeEmulator, pod: Any, **kpo: Any) -> Any:
    """Write and dag.test() a one-task DAG running ``pod`` through KubernetesPodOperator; the DagRun."""
    from airflow.models import DagBag

    dag_id = f"kpo_{uuid.uuid4().hex[:10]}"
    spec = {"dag_id": dag_id, "pod": to_dict(pod),
            "kpo": {"config_file": str(emulator.kubeconfig), "in_cluster": False, "get_logs": True, **kpo}}
    (dags / f"{dag_id}.py").write_text(DAG_TEMPLATE)
    (dags / f"{dag_id}.json").write_text(json.dumps(spec))
    bag = DagBag(dag_folder=str(dags / f"{dag_id}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.get_dag(dag_id).test()


def deployment(**kube: Any) -> ModelDeployment:
    # IRSA: no Secret reference, so these pods need nothing created first.
    irsa = AwsCredentials(irsa_role_arn="arn:aws:iam::123456789012:role/rollout")
    return ModelDeployment(name="llm", release_prefix="s3://placeholder/p",
                           kubernetes=KubernetesConfig(namespace=NS, aws=irsa, **kube))


def pod_said(out: str, text: str) -> bool:
    """The container's own output line, as KubernetesPodOperator relays it (not the echoed spec)."""
    return re.search(r"\[base\] (logs: )?" + re.escape(text), out) is not None


def labelled_pods(v1: Any, dag_id: str) -> list[Any]:
    return v1.list_namespaced_pod(NS, label_selector=f"dag_id={dag_id}").items


def test_sync_pod_syncs_a_release_into_the_pvc(airflow_dags: Path, kube_emulator: KubeEmulator, k8s: Any,
                                               s3_server: Any, bucket: str, pvc: Path, tmp_path: Path,
                                               capfd: pytest.CaptureFixture[str]) -> None:
    from triton_rollout.pvc.layout import PvcLayout
    from triton_rollout.release.publish import publish_release

    from tests.helpers import make_release_dir

    src = make_release_dir(tmp_path / "src", seed=4, small=3, model="llm")
    publish_release(src, f"s3://{bucket}/releases/llm/1")
    claim = f"repo-{uuid.uuid4().hex[:6]}"
    kube = KubernetesConfig()
    kube_emulator.create_pvc(NS, claim, pvc, owner=(kube.run_as_user, kube.fs_group))  # the pods run as uid 1000
    kube_emulator.create_secret(NS, "s3-creds", {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                                 "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    model = ModelDeployment(
        name="llm", release_prefix=f"s3://{bucket}/releases",
        kubernetes=KubernetesConfig(namespace=NS, pvc_claim=claim, aws=AwsCredentials(
            secret_name="s3-creds", endpoint_url=s3_server.endpoint, region="us-east-1")),
    )
    pod = step_pod(model, SyncRequest.for_model(model, model.release(1)))
    run = run_pod_dag(airflow_dags, kube_emulator, pod, on_finish_action="delete_pod",
                      startup_timeout_seconds=60)
    out = capfd.readouterr().out
    assert run.state == "success", out[-3000:]
    for f in sorted((src / "llm").rglob("*")):
        if f.is_file():
            synced = pvc / "repository" / "llm" / "1" / f.relative_to(src / "llm")
            assert synced.read_bytes() == f.read_bytes(), synced
    assert PvcLayout.at(pvc, create=False).publish_record("llm", 1) is not None
    # The pod's JSON result reached the task log, and the secret's value did not.
    assert pod_said(out, "{") and '"model": "llm"' in out
    assert s3_server.secret_key not in out
    assert labelled_pods(k8s, run.dag_id) == []  # on_finish_action=delete_pod


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_failing_command_fails_the_task_with_its_exit_code(airflow_dags: Path, kube_emulator: KubeEmulator,
                                                           k8s: Any, deferrable: bool,
                                                           capfd: pytest.CaptureFixture[str]) -> None:
    pod = step_pod(deployment(), StatusRequest(pvc="/pvc"))
    pod.spec.volumes = pod.spec.containers[0].volume_mounts = None  # no PVC needed to fail
    pod.spec.containers[0].command = ["python", "-c", "import sys; print('about to fail'); sys.exit(3)"]
    run = run_pod_dag(airflow_dags, kube_emulator, pod, deferrable=deferrable,
                      on_finish_action="delete_succeeded_pod", startup_timeout_seconds=60)
    out = capfd.readouterr().out
    assert run.state == "failed"
    assert pod_said(out, "about to fail"), out[-3000:]
    assert "returned a failure" in out
    # delete_succeeded_pod keeps a failed pod for inspection, with the real exit code.
    (kept,) = labelled_pods(k8s, run.dag_id)
    assert kept.status.phase == "Failed"
    assert kept.status.container_statuses[0].state.terminated.exit_code == 3
    assert "'exit_code': 3" in out
    k8s.delete_namespaced_pod(kept.metadata.name, NS)


def test_deferrable_success_streams_logs_and_deletes_the_pod(airflow_dags: Path, kube_emulator: KubeEmulator,
                                                             k8s: Any, capfd: pytest.CaptureFixture[str]) -> None:
    pod = step_pod(deployment(), StatusRequest(pvc="/pvc"))
    pod.spec.volumes = pod.spec.containers[0].volume_mounts = None
    pod.spec.containers[0].command = ["python", "-c", "import time\nfor i in range(3):\n"
                                      "    print(f'step {i} done', flush=True); time.sleep(0.5)"]
    run = run_pod_dag(airflow_dags, kube_emulator, pod, deferrable=True, on_finish_action="delete_pod",
                      poll_interval=1, startup_timeout_seconds=60)
    out = capfd.readouterr().out
    assert run.state == "success", out[-3000:]
    assert "DEFERRED" in out or "trigger" in out.lower()
    assert all(pod_said(out, f"step {i} done") for i in range(3)), out[-3000:]
    assert labelled_pods(k8s, run.dag_id) == []


def test_gpu_pod_without_gpu_node_stays_pending_and_fails_saying_why(
        airflow_dags: Path, kube_emulator: KubeEmulator, k8s: Any, capfd: pytest.CaptureFixture[str]) -> None:
    small = ResourceSpec(requests={"cpu": "100m", "memory": "64Mi"}, limits={"cpu": "1", "memory": "1Gi"})
    model = deployment(build_resources=small)
    model = ModelDeployment(name="llm", release_prefix="s3://placeholder/p", tp_size=2,
                            kubernetes=model.kubernetes)
    run = run_pod_dag(airflow_dags, kube_emulator, build_pod(model, BuildRequest(
        spec_file="x.json", checkpoint=ReleaseUri.parse("s3://placeholder/p/llm/1"),
        output=ReleaseUri.parse("s3://placeholder/p/engines/llm/1"))),
                      startup_timeout_seconds=3, on_finish_action="delete_pod")
    out = capfd.readouterr().out
    assert run.state == "failed"
    assert "Insufficient nvidia.com/gpu" in out  # the scheduler's reason, via the pod's events/conditions
    assert "took too long to be scheduled" in out
    assert labelled_pods(k8s, run.dag_id) == []  # deleted even though it never ran


def _role_without(namespace: str, resource: str, verb: str) -> list[dict[str, Any]]:
    """k8s/rbac.yaml's Role and RoleBinding, moved to ``namespace``, with ``verb`` on ``resource`` taken out."""
    import yaml

    from devstack.stack import RBAC_MANIFEST

    docs = [d for d in yaml.safe_load_all(RBAC_MANIFEST.read_text()) if d and d["kind"] in ("Role", "RoleBinding")]
    for doc in docs:
        doc["metadata"]["namespace"] = namespace
        for rule in doc.get("rules", []):
            if resource in rule["resources"]:
                rule["verbs"] = [v for v in rule["verbs"] if v != verb]
    return docs


@pytest.mark.parametrize(("resource", "verb", "what_fails"), [
    ("pods", None, None),  # the project's Role as rendered: the operator works
    ("pods/log", "get", "pods/log"),  # the operator streams the log
    # on_finish_action deletes the pod: the provider logs the 403 and the task still succeeds, so the pod
    # leaks (cncf-kubernetes 10.25 operators/pod.py process_pod_deletion); the test shows that instead.
    ("pods", "delete", "delete resource \\\"pods\\\""),
])
def test_the_project_rbac_is_what_the_operator_needs(airflow_dags: Path, kube_emulator: KubeEmulator, k8s: Any,
                                                     resource: str, verb: str | None, what_fails: str | None,
                                                     capfd: pytest.CaptureFixture[str],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """KubernetesPodOperator as the ServiceAccount k8s/rbac.yaml binds (over the emulator's TLS port, with
    RBAC enforced): it works with the rendered Role, and fails, naming the forbidden request, when one verb
    the operator uses is missing."""
    from devstack.stack import AIRFLOW_IDENTITY

    ns = f"rbac-{uuid.uuid4().hex[:6]}"
    kube_emulator.create_namespace(ns)
    kube_emulator.create_service_account(ns, KubernetesConfig().service_account)
    for doc in _role_without(ns, resource, verb or ""):
        plural = "roles" if doc["kind"] == "Role" else "rolebindings"
        kube_emulator.post(f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{plural}", doc)
    kubeconfig = kube_emulator.service_account_kubeconfig(*AIRFLOW_IDENTITY)
    model = ModelDeployment(name="llm", release_prefix="s3://placeholder/p", kubernetes=KubernetesConfig(
        namespace=ns, aws=AwsCredentials(irsa_role_arn="arn:aws:iam::123456789012:role/rollout")))
    pod = step_pod(model, StatusRequest(pvc="/pvc"))
    pod.spec.volumes = pod.spec.containers[0].volume_mounts = None
    pod.spec.containers[0].command = ["python", "-c", "print('ran as the worker', flush=True)"]
    run = run_pod_dag(airflow_dags, kube_emulator, pod, config_file=str(kubeconfig), namespace=ns,
                      on_finish_action="delete_pod", startup_timeout_seconds=60)
    captured = capfd.readouterr()
    out = captured.out + captured.err + caplog.text  # the provider logs a failed delete through logging
    if what_fails is None:
        assert run.state == "success", out[-3000:]
        assert pod_said(out, "ran as the worker"), out[-3000:]
        assert kube_emulator.core_v1().list_namespaced_pod(ns).items == []  # deleted by the operator
    else:
        assert "forbidden" in out.lower() and what_fails in out, out[-3000:]
        if verb == "delete":
            assert len(kube_emulator.core_v1().list_namespaced_pod(ns).items) == 1  # left behind
        else:
            assert run.state == "failed", out[-3000:]
        # The API's own 403 message (JSON-escaped in the operator's log) names the identity and the verb.
        assert f"User \\\"system:serviceaccount:{AIRFLOW_IDENTITY[0]}:{AIRFLOW_IDENTITY[1]}\\\" cannot" in out, \
            out[-3000:]
