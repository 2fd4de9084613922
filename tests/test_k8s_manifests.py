"""The committed k8s/ manifests: identical to what the CLI renders, valid against Kubernetes' schema."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from triton_rollout.cli import main
from triton_rollout.config import AwsCredentials, KubernetesConfig, ModelDeployment
from triton_rollout.kube.manifests import ARGO_HOOK, ARGO_HOOK_DELETE, render

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "k8s"
# The oldest schema shipped that we still care about, and the newest one the package knows.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def committed_docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in sorted(COMMITTED.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]


def by_kind(kind: str, docs: list[tuple[str, dict]] | None = None) -> list[dict]:
    return [d for _, d in (docs or committed_docs()) if d["kind"] == kind]


def test_committed_manifests_equal_the_cli_render(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render-manifests", "--out", str(tmp_path)]) == 0
    result = json.loads(capsys.readouterr().out)
    rendered = {p.name: p.read_text() for p in tmp_path.glob("*.yaml")}
    committed = {p.name: p.read_text() for p in COMMITTED.glob("*.yaml")}
    assert len(result["written"]) == len(rendered) >= 6
    assert committed.keys() == rendered.keys(), "re-run: python -m triton_rollout render-manifests --out k8s/"
    for name, text in rendered.items():
        assert committed[name] == text, f"k8s/{name} is stale: re-run `make manifests`"


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
    (job,) = [d for d in by_kind("Job") if d["metadata"]["name"].endswith("-sync-v1")]
    job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, VERSIONS[-1], strict=True)


def test_presync_hook_annotations_and_no_ttl() -> None:
    (hook,) = [d for d in by_kind("Job") if ARGO_HOOK in (d["metadata"].get("annotations") or {})]
    notes = hook["metadata"]["annotations"]
    assert notes[ARGO_HOOK] == "PreSync"
    assert set(notes[ARGO_HOOK_DELETE].split(",")) == {"BeforeHookCreation", "HookSucceeded"}
    assert "ttlSecondsAfterFinished" not in hook["spec"]


def test_triton_deployment_serves_only_the_repository_in_explicit_mode() -> None:
    (deploy,) = by_kind("Deployment")
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    assert "--model-control-mode=explicit" in c["args"]
    (repo,) = [m for m in c["volumeMounts"] if m["name"] == "model-repository"]
    assert repo["subPath"] == "repository" and repo["readOnly"] is True
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # Readiness must not follow /v2/health/ready, which drops while any model loads.
    assert c["readinessProbe"]["httpGet"]["path"] != "/v2/health/ready"
    (svc,) = by_kind("Service")
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]


def test_rbac_is_namespaced_and_minimal() -> None:
    assert not by_kind("ClusterRole") and not by_kind("ClusterRoleBinding")
    (role,) = by_kind("Role")
    rules = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert rules["pods"] == {"create", "get", "list", "watch", "delete", "patch"}
    assert rules["pods/log"] == {"get"}
    assert set(rules) <= {"pods", "pods/log", "events"}
    assert "secrets" not in rules and all("*" not in v for v in rules.values())
    (binding,) = by_kind("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["metadata"]["namespace"] == role["metadata"]["namespace"]


def test_no_secret_material_in_any_manifest() -> None:
    text = "\n".join(p.read_text() for p in COMMITTED.glob("*.yaml"))
    assert "kind: Secret" not in text
    for _, doc in committed_docs():
        for env in _envs(doc):
            if env["name"] in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
                assert "value" not in env and "secretKeyRef" in env["valueFrom"]


def test_irsa_render_annotates_the_service_account_and_drops_key_refs() -> None:
    model = ModelDeployment(name="m", release_prefix="s3://bkt/r", kubernetes=KubernetesConfig(
        aws=AwsCredentials(irsa_role_arn="arn:aws:iam::123456789012:role/sync")))
    docs = [("x", d) for ds in render(model).values() for d in ds]
    (sa,) = by_kind("ServiceAccount", docs)
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/sync")
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
