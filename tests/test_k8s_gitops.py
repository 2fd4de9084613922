"""The manifests driven with the real kubectl as a platform team would, against the API-server emulator.

- `kubectl apply -k` of the local overlay (k8s-overlays/local, plus the team's own kustomization naming
  the local Triton's and S3's addresses in the rollout-target ConfigMap: the emulator has no Services or
  DNS, and the local Triton is a process, not a Deployment) deploys a published release into the local
  tritonserver, which then serves it; a Job made from the reconcile CronJob (`kubectl create job
  --from=cronjob/...`) repairs a damaged file on the PVC.
- Argo CD's order (phase, then wave, then kind, then name; each wave healthy before the next) applied
  object by object: the first sync runs the deploy Job to completion on its first pass.
- The Triton Deployment's pod on a volume where nothing was synced yet: its container is created (the
  kubelet refuses a missing subPath on a read-only volume) and repository/ belongs to the pods' user.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from triton_rollout.kube.manifests import (
    ARGO_WAVE,
    TRITON_REPOSITORY_KEY,
    TRITON_URL_KEY,
    example_deployment,
    target_name,
)
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.steps import result_from_log

from devstack import demo_models
from devstack.kube import KubeEmulator, default_node, default_runtime
from devstack.s3 import SeaweedS3
from devstack.stack import PVC_OWNER, image_runtime
from devstack.triton import TritonServer
from tests.helpers import golden, infer_llm, run_kubectl, text_of

ROOT = Path(__file__).resolve().parents[1]
LOCAL_OVERLAY = ROOT / "k8s-overlays" / "local"
MODEL = example_deployment()
KUBE = MODEL.kubernetes
NS = KUBE.namespace
DEPLOY_JOB = f"{MODEL.name}-deploy-v1"
ARGO_HOOK = "argocd.argoproj.io/hook"
# Argo CD's phases, and its kind order within a wave (argoproj/gitops-engine pkg/sync/sync_tasks.go, the
# install order Helm uses); kinds not listed go last, by name.
PHASES = ("PreSync", "Sync", "PostSync")
KIND_ORDER = ("Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
              "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
              "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
              "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
              "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
              "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "Ingress",
              "APIService")
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


@dataclass
class LocalCluster:
    emu: KubeEmulator
    triton: TritonServer
    volume: Path  # the claim's folder: the emulator provisions <state>/pvcs/<namespace>/<claim>
    kustomization: Path  # the team's overlay of k8s-overlays/local

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60
                ) -> subprocess.CompletedProcess[str]:
        return run_kubectl(self.emu.kubeconfig, NS, *args, stdin=stdin, check=check, timeout=timeout)

    def create_s3_secret(self, s3: SeaweedS3) -> None:
        """As a platform team does out of band (never in Git): the Secret the pods' env references."""
        self.kubectl("create", "secret", "generic", KUBE.aws.secret_name or "",
                     f"--from-literal={KUBE.aws.access_key_id_key}={s3.access_key}",
                     f"--from-literal={KUBE.aws.secret_access_key_key}={s3.secret_key}")

    def wait_job(self, name: str, timeout_s: int = 240) -> None:
        out = self.kubectl("wait", "--for=condition=complete", f"job/{name}", f"--timeout={timeout_s}s",
                           check=False, timeout=timeout_s + 30)
        if out.returncode != 0:
            logs = self.kubectl("logs", f"job/{name}", "--all-containers", check=False).stdout
            pods = self.kubectl("get", "pods", check=False).stdout
            pytest.fail(f"job/{name} did not complete: {out.stderr}\n{pods}\n{logs[-4000:]}")


def publish_llama(s3: SeaweedS3, work: Path) -> str:
    """The demo LLM ensemble (CPU python backend) published as the example model's release 1."""
    from triton_rollout.release.publish import publish_release
    from triton_rollout.release.s3 import make_client

    bucket = MODEL.release_prefix.removeprefix("s3://").split("/", 1)[0]
    client = make_client()
    if bucket not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=bucket)
    uri = f"{MODEL.release_prefix}/{MODEL.name}/1"
    key = f"{uri.removeprefix(f's3://{bucket}/')}/manifest.json"
    if not client.list_objects_v2(Bucket=bucket, Prefix=key).get("Contents"):  # releases are immutable
        src = demo_models.write_release(demo_models.LLM_MODEL, work / "release", 1)
        publish_release(src, uri, compat=demo_models.release_compat(demo_models.LLM_MODEL))
    return uri


@pytest.fixture()
def cluster(tmp_path: Path, s3_server: SeaweedS3, triton_install: Path) -> Iterator[LocalCluster]:
    publish_llama(s3_server, tmp_path)
    emu = KubeEmulator(tmp_path / "emu", images=[image_runtime()]).start()
    try:
        volume = emu.state_dir / "pvcs" / NS / KUBE.pvc_claim
        # A fresh volume is root's. On a cluster the Triton pod's init container makes repository/ as the
        # pods' user (test_triton_pod_creates_its_repository_on_an_empty_volume); here Triton is a local
        # process, so the test takes that one step.
        (volume / "repository").mkdir(parents=True)
        os.chown(volume / "repository", *PVC_OWNER)
        triton = TritonServer(volume / "repository", tmp_path / "triton", install_dir=triton_install).start()
        try:
            kustomization = tmp_path / "team-overlay"
            kustomization.mkdir()
            (kustomization / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": [os.path.relpath(LOCAL_OVERLAY, kustomization)],
                "configMapGenerator": [{
                    "name": target_name(MODEL), "namespace": NS, "behavior": "merge",
                    "options": {"disableNameSuffixHash": True},
                    "literals": [f"{TRITON_URL_KEY}={triton.http_url}",
                                 f"{TRITON_REPOSITORY_KEY}={volume / 'repository'}",
                                 f"AWS_ENDPOINT_URL={s3_server.endpoint}", "AWS_DEFAULT_REGION=us-east-1"]}],
            }))
            yield LocalCluster(emu, triton, volume, kustomization)
        finally:
            triton.stop()
    finally:
        emu.stop()


def assert_serving_v1(c: LocalCluster) -> None:
    answer = infer_llm(c.triton.http_url, 1)
    assert answer["model_version"] == "1" and text_of(answer) == golden(1)
    state = PvcLayout.at(c.volume, create=False).deployment(MODEL.name)
    assert state.promoted == 1


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status == 200
    except urllib.error.HTTPError:
        return False


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_kubectl_apply_k_deploys_and_a_job_from_the_cronjob_repairs(cluster: LocalCluster,
                                                                      s3_server: SeaweedS3) -> None:
    c = cluster
    applied = c.kubectl("apply", "-k", str(c.kustomization)).stdout
    for obj in (f"namespace/{NS}", f"persistentvolumeclaim/{KUBE.pvc_claim}", f"job.batch/{DEPLOY_JOB}",
                f"cronjob.batch/{MODEL.name}-reconcile", f"job.batch/{KUBE.pvc_claim}-permissions"):
        assert f"{obj} created" in applied, applied
    c.create_s3_secret(s3_server)  # the pods wait for it (CreateContainerConfigError), as on a cluster
    c.wait_job(f"{KUBE.pvc_claim}-permissions")
    c.wait_job(DEPLOY_JOB)
    row = c.kubectl("get", "pvc", KUBE.pvc_claim).stdout.splitlines()[1].split()
    assert row[1] == "Bound" and "RWX" in row
    deploy_log = c.kubectl("logs", f"job/{DEPLOY_JOB}", "-c", "deploy").stdout
    assert '"outcome": "promoted"' in deploy_log, deploy_log
    assert_serving_v1(c)
    # The volume root was root's; the init container handed it to the pods' user, who wrote everything.
    assert (c.volume.stat().st_uid, c.volume.stat().st_gid) == PVC_OWNER
    # (but __pycache__: the local tritonserver runs as the test's user, root, and its python backend writes
    # bytecode beside model.py, which the cluster's Triton, uid 1000 on a read-only mount, cannot.)
    assert [p for p in c.volume.rglob("*") if p.stat().st_uid != PVC_OWNER[0] and "__pycache__" not in p.parts] == []

    # Damage one published file; a reconcile started by hand from the CronJob puts it back.
    repo = c.volume / "repository"
    damaged = repo / "tensorrt_llm" / "1" / "bigram.npy"
    intact = sha256(damaged)
    damaged.write_bytes(b"\0" * damaged.stat().st_size)
    assert sha256(damaged) != intact
    c.kubectl("create", "job", "reconcile-by-hand", f"--from=cronjob/{MODEL.name}-reconcile")
    c.wait_job("reconcile-by-hand")
    assert sha256(damaged) == intact
    report = result_from_log(c.kubectl("logs", "job/reconcile-by-hand", "-c", "reconcile").stdout.splitlines())
    assert report is not None and report["promoted"] == 1
    assert report["drift"] and report["repaired"] and report["bytes_transferred"] == damaged.stat().st_size
    assert_serving_v1(c)

    # Triton lost the model (an unload by hand, a restart): the next reconcile converges it again.
    unload = urllib.request.Request(f"{c.triton.http_url}/v2/repository/models/ensemble/unload", data=b"{}")
    with urllib.request.urlopen(unload, timeout=10) as resp:
        assert resp.status == 200
    deadline = time.monotonic() + 20
    while ready(f"{c.triton.http_url}/v2/models/ensemble/ready") and time.monotonic() < deadline:
        time.sleep(0.2)  # unload is asynchronous
    c.kubectl("create", "job", "reconcile-again", f"--from=cronjob/{MODEL.name}-reconcile")
    c.wait_job("reconcile-again")
    report = result_from_log(c.kubectl("logs", "job/reconcile-again", "-c", "reconcile").stdout.splitlines())
    assert report is not None and report["triton_not_ready"] and report["reloaded"] and not report["repaired"]
    assert_serving_v1(c)


def argo_order(docs: list[dict[str, Any]]) -> list[tuple[tuple[int, int], list[dict[str, Any]]]]:
    """The docs grouped as Argo CD syncs them: by phase, then wave; kind then name within a wave."""
    def phase(d: dict[str, Any]) -> int:
        hook = (d["metadata"].get("annotations") or {}).get(ARGO_HOOK, "Sync")
        return PHASES.index(hook.split(",")[0])

    def wave(d: dict[str, Any]) -> int:
        return int((d["metadata"].get("annotations") or {}).get(ARGO_WAVE, "0"))

    def kind(d: dict[str, Any]) -> int:
        return KIND_ORDER.index(d["kind"]) if d["kind"] in KIND_ORDER else len(KIND_ORDER)

    groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for d in sorted(docs, key=lambda d: (phase(d), wave(d), kind(d), d["metadata"]["name"])):
        groups.setdefault((phase(d), wave(d)), []).append(d)
    return list(groups.items())


def wait_healthy(c: LocalCluster, doc: dict[str, Any], timeout_s: float = 240) -> None:
    """Argo CD's health checks for what the app holds: a claim is healthy once Bound, a Job once complete
    (a failed one fails the sync), a Namespace once Active; the rest once they exist."""
    kind, name = doc["kind"].lower(), doc["metadata"]["name"]
    path = {"persistentvolumeclaim": "{.status.phase}", "namespace": "{.status.phase}", "job": ""}.get(kind)
    if kind == "job":
        c.wait_job(name, int(timeout_s))
        return
    deadline = time.monotonic() + timeout_s
    while path is not None:
        phase = c.kubectl("get", kind, name, "-o", f"jsonpath={path}", check=False).stdout
        if phase in ("Bound", "Active"):
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{kind}/{name} not healthy: {phase!r}")
        time.sleep(0.5)
    c.kubectl("get", kind, name)


@pytest.mark.slow
def test_argocd_first_sync_order_runs_the_deploy_job_on_the_first_pass(cluster: LocalCluster,
                                                                         s3_server: SeaweedS3) -> None:
    c = cluster
    built = subprocess.run(["kubectl", "kustomize", str(c.kustomization)], capture_output=True, text=True, timeout=60)
    assert built.returncode == 0, built.stderr
    docs = [d for d in yaml.safe_load_all(built.stdout) if d]
    order = argo_order(docs)
    assert [d["kind"] for d in order[0][1]] == ["Namespace"]
    jobs_seen = []
    for (_, _), group in order:
        c.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(group))
        if group[0]["kind"] == "Namespace":
            c.create_s3_secret(s3_server)  # a sealed / external secret would sit in the next wave
        for doc in group:
            wait_healthy(c, doc)
            if doc["kind"] == "Job":
                jobs_seen.append(doc["metadata"]["name"])
    assert jobs_seen == [f"{KUBE.pvc_claim}-permissions", DEPLOY_JOB]
    # First pass: one pod each, none failed (nothing waited on an object of a later wave).
    for job in jobs_seen:
        counts = c.kubectl("get", "job", job, "-o", "jsonpath={.status.succeeded}/{.status.failed}").stdout
        assert counts == "1/", (job, counts)
    assert_serving_v1(c)


def fake_tritonserver(folder: Path) -> Path:
    """A stand-in for NVIDIA's image, which cannot run here (no GPU, no registry): a `tritonserver` that
    checks what the real one needs of its mounts (the repository folder exists, it is read-only), then idles."""
    folder.mkdir(parents=True)
    script = folder / "tritonserver"
    script.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in --model-repository=*) repo="${a#*=}";; esac; done\n'
                      '[ -d "$repo" ] || { echo "no repository $repo"; exit 1; }\n'
                      'if touch "$repo/.probe" 2>/dev/null; then echo "$repo is writable"; exit 1; fi\n'
                      'echo "serving read-only $repo"\nexec sleep 600\n')
    script.chmod(0o755)
    folder.chmod(0o755)
    return folder


def test_triton_pod_creates_its_repository_on_an_empty_volume(tmp_path: Path) -> None:
    """Before the first sync there is no repository/ on the volume. The Deployment's pod must still start:
    the kubelet fails a subPath it cannot create on a read-only volume (CreateContainerConfigError), and
    where it can, creates it root-owned, which the sync pods could not publish into."""
    fake = fake_tritonserver(tmp_path / "fake-image")
    gpu_node = default_node()
    gpu_node["labels"] = {**gpu_node["labels"], "nvidia.com/gpu.product": KUBE.gpu_product}
    gpu_node["capacity"] = {**gpu_node["capacity"], "cpu": "16", "memory": "128Gi", "nvidia.com/gpu": "1"}
    image = {"pattern": KUBE.images.triton.split(":")[0] + ":*", "path": [str(fake)], "env": {},
             "binds": [str(fake)]}
    emu = KubeEmulator(tmp_path / "emu", nodes=[gpu_node], images=[image, default_runtime()]).start()
    try:
        volume = tmp_path / "volume"
        volume.mkdir()
        # A volume the pods' user owns (an EFS access point's root, or after the volume-permissions Job).
        emu.create_pvc(NS, KUBE.pvc_claim, volume, owner=PVC_OWNER)
        emu.create_service_account(NS, "triton-serving")  # the Triton pods' account (k8s/rbac.yaml)
        (deployment,) = [d for d in yaml.safe_load_all((ROOT / "k8s" / "triton.yaml").read_text())
                         if d and d["kind"] == "Deployment"]
        template = deployment["spec"]["template"]
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "triton-0", "labels": template["metadata"]
                                                               ["labels"]}, "spec": template["spec"]}
        run_kubectl(emu.kubeconfig, NS, "apply", "-f", "-", stdin=yaml.safe_dump(pod))
        deadline = time.monotonic() + 60
        log = ""
        while "serving" not in log and time.monotonic() < deadline:
            time.sleep(0.5)
            log = run_kubectl(emu.kubeconfig, NS, "logs", "triton-0", "-c", "tritonserver", check=False).stdout
        status = run_kubectl(emu.kubeconfig, NS, "get", "pod", "triton-0", "-o", "yaml").stdout
        assert log.strip() == f"serving read-only {KUBE.triton_repository_path}", status
        run_kubectl(emu.kubeconfig, NS, "delete", "pod", "triton-0", "--grace-period=1")
        repo = volume / "repository"
        assert repo.is_dir() and (repo.stat().st_uid, repo.stat().st_gid) == PVC_OWNER
    finally:
        emu.stop()
