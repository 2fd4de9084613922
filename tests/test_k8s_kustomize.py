"""k8s/ as a Kustomize base and its overlays (k8s-overlays/), built offline by the real `kubectl kustomize`.

Each overlay builds to exactly what the code renders for its cluster, validates against Kubernetes'
schemas and passes `kubectl apply --dry-run=server` on the API-server emulator; its claim binds only
through a StorageClass that offers ReadWriteMany, and the pods' user can write the volume by the
overlay's permission method (config/storage.py) where the base's fsGroup would not be applied.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from triton_rollout.kube.kustomize import example_overlays, render_overlay
from triton_rollout.kube.manifests import example_deployment, render

from devstack.kube import KubeEmulator
from devstack.kube.kubelet import FS_GROUP_POLICY_ANNOTATION
from devstack.kube.storage import ACCESS_MODES_PARAM
from tests.helpers import run_kubectl

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "k8s"
OVERLAYS = ROOT / "k8s-overlays"
NS = example_deployment().kubernetes.namespace
MODEL = example_deployment()
OVERLAY_NAMES = [o.name for o in example_overlays(MODEL)]
# An EKS cluster's default: gp2/gp3 EBS classes offer ReadWriteOnce only.
EBS_DEFAULT = {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
               "metadata": {"name": "gp3", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
               "provisioner": "ebs.csi.aws.com", "parameters": {ACCESS_MODES_PARAM: "ReadWriteOnce"}}
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def kustomize(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def keyed(docs: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in docs}


def overlay(name: str) -> Any:
    return next(o for o in example_overlays(MODEL) if o.name == name)


def as_provisioned_here(sc: dict[str, Any], *, fs_group_policy: str) -> dict[str, Any]:
    """The overlay's StorageClass with the emulator's stand-ins for what its CSI driver does: the access
    modes it offers (EFS and csi-driver-nfs: ReadWriteMany too) and its CSIDriver's fsGroupPolicy."""
    params = {**sc["parameters"], ACCESS_MODES_PARAM: "ReadWriteOnce,ReadWriteMany",
              FS_GROUP_POLICY_ANNOTATION: fs_group_policy}
    return {**sc, "parameters": params}


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulator]:
    emulator = KubeEmulator(tmp_path_factory.mktemp("kustomize") / "emu", storage_classes=[EBS_DEFAULT]).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def kubectl(emu: KubeEmulator, *args: str, stdin: str | None = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
    return run_kubectl(emu.kubeconfig, NS, *args, stdin=stdin, check=check, timeout=90)


def test_every_overlay_builds_to_what_the_code_renders() -> None:
    assert sorted(p.name for p in OVERLAYS.iterdir()) == sorted(OVERLAY_NAMES)
    base = [d for docs in render(MODEL).values() for d in docs]
    assert keyed(kustomize(BASE)) == keyed(base)
    for o in example_overlays(MODEL):
        built = keyed(kustomize(OVERLAYS / o.name))
        expected = keyed(render_overlay(MODEL, o))
        assert built.keys() == expected.keys(), o.name
        for key, doc in expected.items():
            assert built[key] == doc, f"{o.name}: {key} differs from the render"
        assert built != keyed(base)


@pytest.mark.parametrize("version", ["1.29.0", kubernetes_validate.latest_version()])
def test_every_overlay_validates_against_the_schema(version: str) -> None:
    for name in OVERLAY_NAMES:
        for doc in kustomize(OVERLAYS / name):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for {version}: {exc.message}")


def test_every_overlay_passes_a_server_dry_run(emu: KubeEmulator) -> None:
    """What the emulator serves goes through its admission, schema and field validation; Deployments and
    Services it does not serve are checked offline above (kubernetes-validate)."""
    served = {line.split()[-1] for line in kubectl(emu, "api-resources", "--no-headers").stdout.splitlines()}
    kubectl(emu, "create", "namespace", NS, check=False)
    for name in ["base", *OVERLAY_NAMES]:
        docs = kustomize(BASE if name == "base" else OVERLAYS / name)
        offline = {d["kind"] for d in docs if d["kind"] not in served}
        assert offline <= {"Deployment", "Service"}, offline
        checked = [d for d in docs if d["kind"] in served]
        out = kubectl(emu, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump_all(checked)).stdout
        assert out.count("(server dry run)") == len(checked) >= 8, out
    broken = kustomize(OVERLAYS / "nfs")
    (pvc,) = [d for d in broken if d["kind"] == "PersistentVolumeClaim"]
    pvc["spec"]["storageClasName"] = pvc["spec"].pop("storageClassName")
    out = kubectl(emu, "apply", "--dry-run=server", "-f", "-", stdin=yaml.safe_dump(pvc), check=False)
    assert out.returncode != 0 and "storageClasName" in out.stderr, out.stderr


def _claim_phase(emu: KubeEmulator) -> str:
    return kubectl(emu, "get", "pvc", MODEL.kubernetes.pvc_claim, "-o", "jsonpath={.status.phase}").stdout


@pytest.mark.parametrize("name", ["eks-efs", "nfs"])
def test_the_claim_binds_through_the_overlays_class_not_the_default(emu: KubeEmulator, name: str) -> None:
    claim = MODEL.kubernetes.pvc_claim
    kubectl(emu, "create", "namespace", NS, check=False)
    kubectl(emu, "delete", "pvc", claim, "--ignore-not-found", "--wait=false")
    # The base's claim (no class): the default EBS class cannot give ReadWriteMany, so it stays Pending.
    kubectl(emu, "apply", "-f", str(BASE / "pvc.yaml"))
    assert _claim_phase(emu) == "Pending"
    events = kubectl(emu, "get", "events", "--field-selector", f"involvedObject.name={claim}").stdout
    assert "ProvisioningFailed" in events and "ReadWriteMany" in events, events
    kubectl(emu, "delete", "pvc", claim, "--wait=false")
    docs = kustomize(OVERLAYS / name)
    (sc,) = [d for d in docs if d["kind"] == "StorageClass"]
    (pvc,) = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["storageClassName"] == sc["metadata"]["name"]
    # Without the class the overlay's claim is Pending too (its class is not there yet) ...
    kubectl(emu, "apply", "-f", "-", stdin=yaml.safe_dump(pvc))
    assert _claim_phase(emu) == "Pending"
    # ... and binds once the class that offers ReadWriteMany exists, as the volume controller retries.
    kubectl(emu, "apply", "-f", "-", stdin=yaml.safe_dump(as_provisioned_here(sc, fs_group_policy="None")))
    kubectl(emu, "wait", "--for=jsonpath={.status.phase}=Bound", f"pvc/{claim}", "--timeout=20s")
    row = kubectl(emu, "get", "pvc", claim).stdout.splitlines()[1].split()
    assert row[1] == "Bound" and "RWX" in row and sc["metadata"]["name"] in row
    kubectl(emu, "delete", "pvc", claim, "--wait=false")
    kubectl(emu, "delete", "storageclass", sc["metadata"]["name"])


def test_write_access_by_the_permission_method(tmp_path_factory: pytest.TempPathFactory) -> None:
    """On an NFS-like class (ReadWriteMany, CSIDriver fsGroupPolicy None, a root-owned volume), the base's
    fsGroup gives uid 1000 no write access; the nfs overlay's volume-permissions Job does. On a driver
    that applies fsGroup (policy File) the base's fsGroup alone is enough."""
    docs = kustomize(OVERLAYS / "nfs")
    (sc,) = [d for d in docs if d["kind"] == "StorageClass"]
    (job,) = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("-permissions")]
    setup = [d for d in docs if d["kind"] in ("Namespace", "ServiceAccount", "PersistentVolumeClaim")]
    # The same Job without its chown init container: the write check alone, as the base's pods would write.
    plain = yaml.safe_load(yaml.safe_dump(job))
    plain["metadata"]["name"] = "write-check"
    plain["spec"]["template"]["spec"].pop("initContainers")
    for policy, jobs in (("None", {"write-check": "Failed", job["metadata"]["name"]: "Complete"}),
                         ("File", {"write-check": "Complete"})):
        emulator = KubeEmulator(tmp_path_factory.mktemp(f"perm-{policy}") / "emu",
                                storage_classes=[as_provisioned_here(sc, fs_group_policy=policy)]).start()
        try:
            kubectl(emulator, "apply", "-f", "-", stdin=yaml.safe_dump_all(setup))
            kubectl(emulator, "wait", "--for=jsonpath={.status.phase}=Bound",
                    f"pvc/{MODEL.kubernetes.pvc_claim}", "--timeout=20s")
            for name, want in jobs.items():
                body = plain if name == "write-check" else job
                kubectl(emulator, "apply", "-f", "-", stdin=yaml.safe_dump(body))
                kubectl(emulator, "wait", f"--for=condition={want}", f"job/{name}", "--timeout=90s")
                if want == "Failed":
                    log = kubectl(emulator, "logs", f"job/{name}", "-c", "check").stdout
                    assert "Permission denied" in log, log
        finally:
            emulator.stop()
