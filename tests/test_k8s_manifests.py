"""The committed k8s/ manifests (a Kustomize base) and k8s-overlays/: identical to what the CLI renders, valid
against Kubernetes' schema, ordered for Argo CD, and the storage config they are rendered from."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from triton_rollout.cli import main
from triton_rollout.config import AwsCredentials, KubernetesConfig, ModelDeployment
from triton_rollout.config.storage import StorageConfig
from triton_rollout.errors import ConfigError
from triton_rollout.kube.manifests import (
    ARGO_WAVE,
    HEADER,
    TRITON_REPOSITORY_KEY,
    TRITON_URL_KEY,
    example_deployment,
    render,
    target_name,
)

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "k8s"
OVERLAYS = ROOT / "k8s-overlays"
KUSTOMIZATION = "kustomization.yaml"
# The oldest schema shipped that we still care about, and the newest one the package knows.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def committed_docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted(COMMITTED.glob("*.yaml")) if p.name != KUSTOMIZATION
            for d in yaml.safe_load_all(p.read_text()) if d]


def rendered_tree(root: Path) -> dict[str, str]:
    """Relative path -> text of the base (``root/k8s``) and its overlays (``root/k8s-overlays``)."""
    base, overlays = root / "k8s", root / "k8s-overlays"
    files = [*base.glob("*.yaml"), *overlays.glob("*/*.yaml")]
    return {p.relative_to(root).as_posix(): p.read_text() for p in files}


def docs_of(model: ModelDeployment) -> list[tuple[str, dict]]:
    return [(name, d) for name, ds in render(model).items() for d in ds]


def pod_specs(doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return [spec["template"]["spec"]] if "template" in spec else []


def by_kind(kind: str, docs: list[tuple[str, dict]] | None = None) -> list[dict]:
    return [d for _, d in (docs or committed_docs()) if d["kind"] == kind]


def test_committed_manifests_equal_the_cli_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render-manifests", "--out", str(tmp_path / "k8s")]) == 0
    result = json.loads(capsys.readouterr().out)
    rendered = rendered_tree(tmp_path)
    committed = rendered_tree(ROOT)
    assert len(result["written"]) == len(rendered) >= 12
    assert {p.split("/")[1] for p in rendered if p.startswith("k8s-overlays/")} == {"eks-efs", "nfs", "local"}
    assert committed.keys() == rendered.keys(), "re-run: python -m triton_rollout render-manifests --out k8s/"
    for name, text in rendered.items():
        assert committed[name] == text, f"{name} is stale: re-run `make manifests`"


def test_render_removes_what_it_no_longer_renders(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "k8s"
    out.mkdir()
    (out / "sync-job.yaml").write_text(HEADER + "kind: Job\n")
    (out / "mine.yaml").write_text("kind: ConfigMap\n")  # not rendered: kept
    assert main(["render-manifests", "--out", str(out)]) == 0
    capsys.readouterr()
    assert not (out / "sync-job.yaml").exists() and (out / "mine.yaml").exists()


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_validates_against_the_openapi_schema(version: str) -> None:
    docs = committed_docs()
    assert {d["kind"] for _, d in docs} >= {"Job", "CronJob", "PersistentVolumeClaim", "Deployment", "Service",
                                            "Role", "RoleBinding", "ServiceAccount"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"k8s/{name} {doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc.message}")


def test_validation_would_catch_a_broken_manifest() -> None:
    (job,) = [d for d in by_kind("Job") if d["metadata"]["name"].endswith("-deploy-v1")]
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def test_argocd_order_needs_nothing_that_does_not_exist_yet() -> None:
    """No PreSync hook (Argo CD runs those before it creates any of the app's objects, so a hook needing the
    app's ServiceAccount or PVC never starts on the first sync); waves put the Namespace first, then what
    the pods need, then Triton, then the Jobs. tests/test_k8s_gitops.py runs that order on the emulator."""
    docs = committed_docs()
    assert not [d for _, d in docs if any(k.startswith("argocd.argoproj.io/hook")
                                          for k in d["metadata"].get("annotations") or {})]
    wave = {(d["kind"], d["metadata"]["name"]): int(d["metadata"]["annotations"][ARGO_WAVE]) for _, d in docs}
    first = {k: v for k, v in wave.items() if k[0] == "Namespace"}
    assert len(first) == 1 and max(first.values()) < min(v for k, v in wave.items() if k[0] != "Namespace")
    needed = [w for (kind, _), w in wave.items() if kind in ("ServiceAccount", "PersistentVolumeClaim", "ConfigMap",
                                                             "Role", "RoleBinding")]
    (triton,) = [w for (kind, _), w in wave.items() if kind == "Deployment"]
    jobs = [w for (kind, _), w in wave.items() if kind in ("Job", "CronJob")]
    assert max(needed) < triton < min(jobs)
    for job in by_kind("Job"):
        # A TTL-deleted Job is missing from the app, so Argo CD would create it (and run it) again.
        assert "ttlSecondsAfterFinished" not in job["spec"]


def test_deploy_job_syncs_then_deploys_the_version_in_the_manifest() -> None:
    model = example_deployment()
    (job,) = by_kind("Job")
    spec = job["spec"]["template"]["spec"]
    (sync,) = spec["initContainers"]
    (deploy,) = spec["containers"]
    assert job["metadata"]["name"] == f"{model.name}-deploy-v1"
    assert sync["args"][:3] == ["sync", "--release", f"{model.release_prefix}/{model.name}/1"]
    args = dict(zip(deploy["args"][1::2], deploy["args"][2::2], strict=False))
    assert deploy["args"][0] == "deploy" and args["--version"] == "1" and args["--model"] == model.name
    # Triton's address comes from the ConfigMap an overlay changes, expanded by the kubelet.
    assert args["--triton-url"] == f"$({TRITON_URL_KEY})"
    assert args["--triton-repository"] == f"$({TRITON_REPOSITORY_KEY})"
    for c in (sync, deploy):
        assert c["envFrom"] == [{"configMapRef": {"name": target_name(model)}}]
    (target,) = by_kind("ConfigMap")
    assert target["metadata"]["name"] == target_name(model)
    assert target["data"] == {TRITON_URL_KEY: model.triton_url,
                              TRITON_REPOSITORY_KEY: model.kubernetes.triton_repository_path}
    # The reconcile CronJob reads the promoted version from state/: no version is rendered into it.
    (cron,) = by_kind("CronJob")
    (rec,) = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert rec["args"][0] == "reconcile" and "--version" not in rec["args"] and "--release" not in rec["args"]
    assert "$(TRITON_URL)" in rec["args"]


def test_storage_config_is_validated_naming_the_field() -> None:
    with pytest.raises(ConfigError, match=r"storage.permissions.*init-job"):
        StorageConfig(permissions="chmod-777")
    with pytest.raises(ConfigError, match=r"storage.access_mode"):
        StorageConfig(access_mode="ReadWriteAll")
    with pytest.raises(ConfigError, match=r"efs_file_system_id.*efs-access-point"):
        StorageConfig(class_name="efs-sc", efs_file_system_id="fs-0123456789abcdef0")
    with pytest.raises(ConfigError, match=r"class_name"):
        StorageConfig(permissions="efs-access-point", efs_file_system_id="fs-0123456789abcdef0")
    with pytest.raises(ConfigError, match=r"nfs_server"):
        StorageConfig(class_name="nfs", nfs_server="10.0.0.2")
    with pytest.raises(ConfigError, match=r"kubernetes.storage.fs_group_change_policy"):
        KubernetesConfig.from_dict({"storage": {"fs_group_change_policy": "Sometimes"}})
    with pytest.raises(ConfigError, match=r"unknown key"):
        KubernetesConfig.from_dict({"storage": {"clas_name": "efs-sc"}})


def test_storage_config_renders_class_claim_and_permissions(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                            ) -> None:
    cfg = tmp_path / "models.yaml"
    cfg.write_text("models:\n  - name: a\n    release_prefix: 's3://bkt/r'\n    kubernetes:\n      storage:\n"
                   "        {class_name: nfs-csi, size: 2Ti, access_mode: ReadWriteMany, permissions: init-job,\n"
                   "         nfs_server: 10.0.0.2, nfs_share: /srv/models, fs_group_change_policy: Always}\n")
    assert main(["render-manifests", "--out", str(tmp_path / "out"), "--config", str(cfg)]) == 0
    capsys.readouterr()
    docs = [(p.name, d) for p in (tmp_path / "out").glob("*.yaml") if p.name != KUSTOMIZATION
            for d in yaml.safe_load_all(p.read_text()) if d]
    (sc,) = by_kind("StorageClass", docs)
    assert (sc["metadata"]["name"], sc["provisioner"]) == ("nfs-csi", "nfs.csi.k8s.io")
    assert sc["parameters"] == {"server": "10.0.0.2", "share": "/srv/models"} and sc["reclaimPolicy"] == "Retain"
    (pvc,) = by_kind("PersistentVolumeClaim", docs)
    assert pvc["spec"]["storageClassName"] == "nfs-csi" and pvc["spec"]["resources"]["requests"]["storage"] == "2Ti"
    (perm,) = [d for d in by_kind("Job", docs) if d["metadata"]["name"].endswith("-permissions")]
    writers = [perm, *by_kind("CronJob", docs), *by_kind("Deployment", docs),
               *[d for d in by_kind("Job", docs) if "-deploy-" in d["metadata"]["name"]]]
    for doc in writers:
        (spec,) = pod_specs(doc)
        first = spec["initContainers"][0]
        assert first["name"] == "volume-permissions", doc["metadata"]["name"]
        assert first["securityContext"]["runAsUser"] == 0 and first["securityContext"]["runAsNonRoot"] is False
        assert first["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "FOWNER"]}
        assert "chown 1000:1000 /pvc" in first["command"][-1]
        assert spec["securityContext"]["fsGroupChangePolicy"] == "Always"
    # The default (fs-group) renders no class, no permissions Job and no root container anywhere.
    default = docs_of(ModelDeployment(name="a", release_prefix="s3://bkt/r"))
    assert not by_kind("StorageClass", default)
    assert not [d for _, d in default for s in pod_specs(d) for c in s.get("initContainers") or []
                if c["name"] == "volume-permissions"]
    assert main(["render-manifests", "--out", str(tmp_path / "o2"), "--config", str(cfg), "--storage-class",
                 "Bad_Name"]) == 2
    assert "storage.class_name" in capsys.readouterr().err


def test_efs_access_point_class_owns_the_volume_by_the_pods_user() -> None:
    model = ModelDeployment(name="a", release_prefix="s3://bkt/r", kubernetes=KubernetesConfig(
        run_as_user=4242, fs_group=4343, storage=StorageConfig(
            class_name="efs-sc", permissions="efs-access-point", efs_file_system_id="fs-0123456789abcdef0")))
    docs = docs_of(model)
    (sc,) = by_kind("StorageClass", docs)
    assert sc["provisioner"] == "efs.csi.aws.com"
    p = sc["parameters"]
    assert (p["provisioningMode"], p["fileSystemId"], p["uid"], p["gid"]) == ("efs-ap", "fs-0123456789abcdef0",
                                                                              "4242", "4343")
    assert not [c for _, d in docs for s in pod_specs(d) for c in s.get("initContainers") or []
                if c["name"] == "volume-permissions"]


def test_triton_deployment_serves_only_the_repository_in_explicit_mode() -> None:
    (deploy,) = by_kind("Deployment")
    spec = deploy["spec"]["template"]["spec"]
    c, gate = spec["containers"]
    assert "--model-control-mode=explicit" in c["args"]
    # Out of the Service until the serving gate is True: set by the sidecar once, then by rollouts (fleet.py).
    assert spec["readinessGates"] == [{"conditionType": "triton-rollout/serving"}]
    assert gate["name"] == "serving-gate" and gate["args"][:1] == ["serving-gate"]
    # The token is the sidecar's alone: no automount, a projected volume mounted only in that container.
    assert spec["automountServiceAccountToken"] is False and spec["serviceAccountName"] == "triton-serving"
    assert [m["mountPath"] for m in gate["volumeMounts"] if m["name"] == "serving-gate-token"] == [
        "/var/run/secrets/kubernetes.io/serviceaccount"]
    assert not [m for m in c["volumeMounts"] if m["name"] == "serving-gate-token"]
    (repo,) = [m for m in c["volumeMounts"] if m["name"] == "model-repository"]
    assert repo["subPath"] == "repository" and repo["readOnly"] is True
    # repository/ does not exist before the first sync: an init container makes it, as the pods' user.
    (init,) = spec["initContainers"]
    assert init["command"] == ["mkdir", "-p", "/pvc/repository"]
    assert [m["mountPath"] for m in init["volumeMounts"] if m["name"] == "model-repository"] == ["/pvc"]
    (vol,) = [v for v in spec["volumes"] if v["name"] == "model-repository"]
    assert "readOnly" not in vol["persistentVolumeClaim"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # Readiness must not follow /v2/health/ready, which drops while any model loads.
    assert c["readinessProbe"]["httpGet"]["path"] != "/v2/health/ready"
    (svc,) = by_kind("Service")
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def test_rbac_is_namespaced_and_minimal() -> None:
    assert not by_kind("ClusterRole") and not by_kind("ClusterRoleBinding")
    roles = {r["metadata"]["name"]: r for r in by_kind("Role")}
    rules = {r: set(rule["verbs"]) for rule in roles["airflow-pod-launcher"]["rules"] for r in rule["resources"]}
    assert rules["pods"] == {"create", "get", "list", "watch", "delete", "patch"}
    assert rules["pods/log"] == {"get"}
    for role in roles.values():
        verbs = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
        assert set(verbs) <= {"pods", "pods/log", "events", "pods/status", "services", "endpointslices"}
        assert "secrets" not in verbs and all("*" not in v for v in verbs.values())
    # The fleet rollout: find replicas, flip their serving gate; nothing that creates, deletes or execs.
    fleet = {r: set(rule["verbs"]) for rule in roles["triton-rollout-fleet"]["rules"] for r in rule["resources"]}
    assert fleet == {"services": {"get"}, "pods": {"get", "list"}, "pods/status": {"patch"},
                     "endpointslices": {"list"}}
    reader = {r: set(rule["verbs"]) for rule in roles["airflow-fleet-reader"]["rules"] for r in rule["resources"]}
    assert reader == {"services": {"get"}, "endpointslices": {"list"}, "pods": {"list"}}  # read-only, for the UI
    gate = {r: set(rule["verbs"]) for rule in roles["triton-serving-gate"]["rules"] for r in rule["resources"]}
    assert gate == {"pods": {"get"}, "pods/status": {"patch"}}
    bindings = by_kind("RoleBinding")
    assert {b["roleRef"]["name"] for b in bindings} == set(roles)
    for binding in bindings:
        assert binding["metadata"]["namespace"] == roles[binding["roleRef"]["name"]]["metadata"]["namespace"]


def test_no_secret_material_in_any_manifest() -> None:
    text = "\n".join(rendered_tree(ROOT).values())
    assert "kind: Secret" not in text
    for _, doc in committed_docs():
        for env in _envs(doc):
            if env["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"]


def test_irsa_render_annotates_the_service_account_and_drops_key_refs() -> None:
    model = ModelDeployment(name="m", release_prefix="s3://bkt/r", kubernetes=KubernetesConfig(
        aws=AwsCredentials(irsa_role_arn="arn:aws:iam::123456789012:role/sync")))
    docs = [("x", d) for ds in render(model).values() for d in ds]
    accounts = {d["metadata"]["name"]: d for d in by_kind("ServiceAccount", docs)}
    assert accounts["triton-rollout"]["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/sync")
    # The Triton pods' account (the serving-gate sidecar) gets no S3 role.
    assert "eks.amazonaws.com/role-arn" not in accounts["triton-serving"]["metadata"]["annotations"]
    assert not any(e["name"].startswith("AWS_ACCESS") for _, d in docs for e in _envs(d))


def test_render_from_a_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "models.yaml"
    cfg.write_text("defaults: {namespace: serving}\nmodels:\n  - {name: a, release_prefix: 's3://bkt/r'}\n"
                   "  - {name: b, release_prefix: 's3://bkt/r', tp_size: 2}\n")
    assert main(["render-manifests", "--out", str(tmp_path / "out"), "--config", str(cfg), "--model", "b"]) == 0
    deploy = yaml.safe_load((tmp_path / "out" / "triton.yaml").read_text().split("---\n")[0])
    assert deploy["metadata"]["namespace"] == "serving"
    assert deploy["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    capsys.readouterr()
    assert main(["render-manifests", "--out", str(tmp_path / "o2"), "--config", str(cfg)]) == 2
    assert "--model" in capsys.readouterr().err


def _envs(doc: dict) -> list[dict]:
    out: list[dict] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if "containers" in node and isinstance(node["containers"], list):
                for c in node["containers"]:
                    out.extend(c.get("env") or [])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    return out
