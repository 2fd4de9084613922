"""Unit tests: the pod specs built from the typed deployment config (the config itself: test_config.py)."""

from __future__ import annotations

import json

import pytest
from triton_rollout.config import AwsCredentials, KubernetesConfig, ModelDeployment, Toleration
from triton_rollout.kube.specs import build_pod, step_pod, to_dict
from triton_rollout.release.s3 import ReleaseUri
from triton_rollout.steps import BuildRequest, PromoteRequest, SyncRequest

BUILD = BuildRequest(spec_file="s.json", checkpoint=ReleaseUri.parse("s3://releases/prod/llama/3"),
                     output=ReleaseUri.parse("s3://releases/prod/engines/llama/3"))


def sync_pod(m: ModelDeployment, version: int, **overrides: object):  # type: ignore[no-untyped-def]
    return step_pod(m, SyncRequest.for_model(m, m.release(version), **overrides))


def promote_pod(m: ModelDeployment, version: int):  # type: ignore[no-untyped-def]
    return step_pod(m, PromoteRequest.for_model(m, version, "run-1"))


def model(**kube: object) -> ModelDeployment:
    return ModelDeployment(
        name="llama",
        release_prefix="s3://releases/prod/",
        tp_size=2,
        pp_size=2,
        kubernetes=KubernetesConfig(gpu_product="NVIDIA-H100-80GB-HBM3", **kube),  # type: ignore[arg-type]
    )


def main_container(pod: dict) -> dict:
    (container,) = pod["spec"]["containers"]
    return container


# -- pod specs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("builder", [
    lambda m: sync_pod(m, 3), lambda m: promote_pod(m, 3), lambda m: build_pod(m, BUILD),
])
def test_every_pod_is_locked_down(builder) -> None:  # type: ignore[no-untyped-def]
    pod = to_dict(builder(model()))
    spec = pod["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert spec["automountServiceAccountToken"] is False
    assert spec["restartPolicy"] == "Never"
    c = main_container(pod)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    # A read-only root needs a writable /tmp, and it must be an emptyDir, not the node's disk.
    tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and any(v["name"] == tmp[0]["name"] and "emptyDir" in v for v in spec["volumes"])
    assert c["command"] == ["python", "-m", "triton_rollout"]


def test_sync_pod_mounts_pvc_and_runs_the_sync_cli() -> None:
    m = model(pvc_claim="repo-claim", pvc_mount_path="/models")
    pod = to_dict(sync_pod(m, 5, result_file="/tmp/r.json"))
    c = main_container(pod)
    assert c["args"] == ["sync", "--release", "s3://releases/prod/llama/5", "--pvc", "/models",
                         "--keep", "2", "--result-file", "/tmp/r.json"]
    (pvc_vol,) = [v for v in pod["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert pvc_vol["persistentVolumeClaim"]["claimName"] == "repo-claim"
    assert {"name": pvc_vol["name"], "mountPath": "/models"} in c["volumeMounts"]
    assert pod["metadata"]["labels"]["triton-rollout/version"] == "5"
    assert c["resources"]["limits"]["memory"] == "2Gi"


def test_aws_credentials_are_references_never_values() -> None:
    pod = to_dict(sync_pod(model(aws=AwsCredentials(secret_name="s3-creds", endpoint_url="http://s3:9000")), 1))
    env = {e["name"]: e for e in main_container(pod)["env"]}
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "value" not in env[var]
        assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "s3-creds"
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://s3:9000"
    # IRSA: no key material at all in the pod; the service account carries the role.
    irsa = model(aws=AwsCredentials(irsa_role_arn="arn:aws:iam::123456789012:role/x"))
    env = {e["name"] for e in main_container(to_dict(sync_pod(irsa, 1)))["env"]}
    assert not env & {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_no_builder_can_inline_a_secret_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # Even with credentials in the building process's environment, nothing of them reaches the spec.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "sup3r-s3cret-value")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID")
    text = json.dumps([to_dict(b) for b in (sync_pod(model(), 1), promote_pod(model(), 1),
                                            build_pod(model(), BUILD))])
    assert "sup3r-s3cret-value" not in text and "AKIAEXAMPLEKEYID" not in text


@pytest.mark.parametrize(("tp", "pp"), [(1, 1), (2, 1), (2, 4)])
def test_build_pod_gpu_count_is_tp_times_pp(tp: int, pp: int) -> None:
    m = ModelDeployment(name="m", release_prefix="s3://bkt/r", tp_size=tp, pp_size=pp,
                        kubernetes=KubernetesConfig(gpu_product="NVIDIA-A100-SXM4-80GB"))
    pod = to_dict(build_pod(m, BUILD))
    res = main_container(pod)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == str(tp * pp)
    assert res["requests"]["nvidia.com/gpu"] == str(tp * pp)
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}


def test_build_pod_shm_tolerations_and_scratch() -> None:
    pod = to_dict(build_pod(model(tolerations=(Toleration("dedicated", "Equal", "gpu", "NoSchedule"),)),
                            BUILD))
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in main_container(pod)["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"
    assert pod["spec"]["tolerations"] == [
        {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    assert "ephemeral-storage" in main_container(pod)["resources"]["requests"]
    # Build pods never touch the serving PVC.
    assert not any("persistentVolumeClaim" in v for v in volumes.values())



@pytest.mark.parametrize("builder", [
    lambda m: sync_pod(m, 3), lambda m: promote_pod(m, 3), lambda m: build_pod(m, BUILD),
])
def test_every_pod_pulls_with_the_configured_secrets(builder) -> None:  # type: ignore[no-untyped-def]
    pod = to_dict(builder(model(image_pull_secrets=("ngc-pull", "ecr-pull"))))
    assert pod["spec"]["imagePullSecrets"] == [{"name": "ngc-pull"}, {"name": "ecr-pull"}]
    assert "imagePullSecrets" not in to_dict(builder(model()))["spec"]  # none configured: none rendered


def test_the_job_manifests_inherit_the_pull_secrets() -> None:
    """The Jobs and the CronJob wrap the step pods (kube/manifests.py), and Triton (NGC's image) pulls with
    the same Secrets."""
    from triton_rollout.kube.manifests import render

    docs = [d for ds in render(model(image_pull_secrets=("ngc-pull",))).values() for d in ds]
    templates = [d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Job", "Deployment")]
    templates += [d["spec"]["jobTemplate"]["spec"]["template"]["spec"] for d in docs if d["kind"] == "CronJob"]
    assert {d["kind"] for d in docs} >= {"Job", "CronJob", "Deployment"}
    assert all(t["imagePullSecrets"] == [{"name": "ngc-pull"}] for t in templates), templates
