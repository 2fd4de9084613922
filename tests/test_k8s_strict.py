"""The emulator is as strict as a cluster: users, referenced objects, images, subPaths.

Each behaviour is checked the way a user sees it on a cluster: the pod's status and the Events the real
kubelet / scheduler / admission write (same reasons and messages), through the kubernetes client and,
where a user would look, the real ``kubectl describe``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from devstack.kube import KubeEmulator, default_runtime
from tests.helpers import run_kubectl, until

NS = "strict"
PY = "python"
NONROOT_UID = 1000


def runtime(pattern: str, **extra: object) -> dict:
    return {**default_runtime(), "pattern": pattern, **extra}


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulator]:
    # No catch-all pattern: an image no mapping matches cannot be "pulled".
    emulator = KubeEmulator(tmp_path_factory.mktemp("strict") / "emu", namespaces=[NS], images=[
        runtime("example/nonroot:*", user=NONROOT_UID, group=NONROOT_UID),
        runtime("example/*"),
    ]).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def v1(emu: KubeEmulator) -> Iterator[client.CoreV1Api]:
    api = emu.core_v1()
    yield api
    api.api_client.close()


def pod(name: str, script: str, image: str = "example/sync:1", **spec: object) -> dict:
    return {"metadata": {"name": name}, "spec": {"restartPolicy": "Never", "containers": [
        {"name": "main", "image": image, "command": [PY, "-c", script]}], **spec}}


def done(v1: client.CoreV1Api, name: str) -> client.V1Pod:
    return until(f"{name} to finish", lambda: (p := v1.read_namespaced_pod(name, NS)).status.phase
                 in ("Succeeded", "Failed") and p)  # type: ignore[return-value]


def waiting(v1: client.CoreV1Api, name: str, reason: str) -> client.V1ContainerState:
    def check() -> object:
        statuses = v1.read_namespaced_pod(name, NS).status.container_statuses or []
        state = statuses[0].state if statuses else None
        return state if state and state.waiting and state.waiting.reason == reason else None
    return until(f"{name} waiting in {reason}", check).waiting  # type: ignore[attr-defined, return-value]


def events(v1: client.CoreV1Api, name: str) -> list[tuple[str, str, str]]:
    items = v1.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items
    return [(e.type, e.reason, e.message) for e in items]


def log(v1: client.CoreV1Api, name: str) -> str:
    return v1.read_namespaced_pod_log(name, NS, _preload_content=False).data.decode()


def kubectl(emu: KubeEmulator, *args: str, stdin: str | None = None, ok: bool = True) -> str:
    if not shutil.which("kubectl"):
        pytest.skip("kubectl is not installed")
    out = run_kubectl(emu.kubeconfig, NS, *args, stdin=stdin, check=False)
    assert (out.returncode == 0) == ok, out.stderr
    return out.stdout if ok else out.stderr


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                reason="switching a pod's user needs root and setpriv")

IDS = "import os; print('ids', os.getuid(), os.getgid(), sorted(os.getgroups()))"


# -- 1. users -------------------------------------------------------------------------------------------


@needs_root
def test_pods_run_as_their_security_context_user_container_level_wins(v1: client.CoreV1Api) -> None:
    body = pod("ids", IDS, securityContext={"runAsUser": 1234, "runAsGroup": 2345, "supplementalGroups": [3456],
                                            "fsGroup": 4567})
    body["spec"]["containers"].append({"name": "own", "image": "example/sync:1", "command": [PY, "-c", IDS],
                                       "securityContext": {"runAsUser": 1111, "runAsGroup": 2222}})
    v1.create_namespaced_pod(NS, body)
    assert done(v1, "ids").status.phase == "Succeeded"
    main = v1.read_namespaced_pod_log("ids", NS, container="main", _preload_content=False).data.decode()
    own = v1.read_namespaced_pod_log("ids", NS, container="own", _preload_content=False).data.decode()
    assert "ids 1234 2345 [2345, 3456, 4567]" in main
    assert "ids 1111 2222 [2222, 3456, 4567]" in own


@needs_root
def test_run_as_non_root_refuses_an_image_that_would_run_as_root(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    v1.create_namespaced_pod(NS, pod("rootimg", "print('never')", securityContext={"runAsNonRoot": True}))
    state = waiting(v1, "rootimg", "CreateContainerConfigError")
    assert state.message.startswith("container has runAsNonRoot and image will run as root (pod: "
                                    '"rootimg_strict(')
    assert v1.read_namespaced_pod("rootimg", NS).status.phase == "Pending"
    assert ("Warning", "Failed", f"Error: {state.message}") in events(v1, "rootimg")
    assert "Error: container has runAsNonRoot and image will run as root" in kubectl(emu, "describe", "pod", "rootimg")
    # The image mapping says this image's USER is 1000: runAsNonRoot alone is then satisfied.
    v1.create_namespaced_pod(NS, pod("nonrootimg", IDS, image="example/nonroot:1",
                                     securityContext={"runAsNonRoot": True}))
    assert done(v1, "nonrootimg").status.phase == "Succeeded"
    assert f"ids {NONROOT_UID} {NONROOT_UID} [{NONROOT_UID}]" in log(v1, "nonrootimg")
    # And an explicit uid 0 breaks the policy.
    v1.create_namespaced_pod(NS, pod("uid0", IDS, securityContext={"runAsNonRoot": True, "runAsUser": 0}))
    assert waiting(v1, "uid0", "CreateContainerConfigError").message.startswith(
        "container's runAsUser breaks non-root policy")


WRITE = "open('/data/f.txt', 'w').write('x'); print('wrote')"


def claim_pod(name: str, claim: str, uid: int = NONROOT_UID, **sc: object) -> dict:
    return pod(name, WRITE, securityContext={"runAsUser": uid, "runAsGroup": uid, **sc},
               volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": claim}}])


def mounted(body: dict) -> dict:
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "d", "mountPath": "/data"}]
    return body


@needs_root
def test_a_volume_the_uid_cannot_write_fails_the_containers_own_write(
        v1: client.CoreV1Api, emu: KubeEmulator, tmp_path: Path) -> None:
    root_owned = tmp_path / "rwx"
    root_owned.mkdir(mode=0o755)
    emu.create_pvc(NS, "rwx", root_owned)  # ReadWriteMany: kubelet leaves its ownership alone, fsGroup or not
    v1.create_namespaced_pod(NS, mounted(claim_pod("nowrite", "rwx", fsGroup=NONROOT_UID)))
    finished = done(v1, "nowrite")
    assert finished.status.phase == "Failed"
    assert "PermissionError" in log(v1, "nowrite")
    assert not (root_owned / "f.txt").exists()
    # A claim provisioned for the pods' user (what the devstack does for the project) is writable.
    provisioned = tmp_path / "owned"
    provisioned.mkdir(mode=0o755)
    emu.create_pvc(NS, "owned", provisioned, owner=(NONROOT_UID, NONROOT_UID))
    v1.create_namespaced_pod(NS, mounted(claim_pod("canwrite", "owned")))
    assert done(v1, "canwrite").status.phase == "Succeeded"
    assert (provisioned / "f.txt").stat().st_uid == NONROOT_UID


@needs_root
def test_fs_group_applies_to_empty_dir_and_rwo_claims_as_kubelet_does(
        v1: client.CoreV1Api, emu: KubeEmulator, tmp_path: Path) -> None:
    rwo = tmp_path / "rwo"
    (rwo / "old").mkdir(parents=True, mode=0o755)
    emu.create_pvc(NS, "rwo", rwo, access_modes=("ReadWriteOnce",))
    file_policy = tmp_path / "file-policy"
    file_policy.mkdir(mode=0o755)
    emu.create_pvc(NS, "rwx-file", file_policy, fs_group_policy="File")
    script = ("import os; open('/data/f.txt','w').write('x'); open('/data/old/g.txt','w').write('y');"
              "open('/more/h.txt','w').write('z'); open('/scratch/i.txt','w').write('w'); print('ok')")
    body = pod("fsgroup", script, securityContext={"runAsUser": 1500, "runAsGroup": 1500, "fsGroup": 2000,
                                                   "fsGroupChangePolicy": "OnRootMismatch"},
               volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "rwo"}},
                        {"name": "m", "persistentVolumeClaim": {"claimName": "rwx-file"}},
                        {"name": "s", "emptyDir": {}}])
    body["spec"]["containers"][0]["volumeMounts"] = [
        {"name": "d", "mountPath": "/data"}, {"name": "m", "mountPath": "/more"},
        {"name": "s", "mountPath": "/scratch"}]
    v1.create_namespaced_pod(NS, body)
    finished = done(v1, "fsgroup")
    assert finished.status.phase == "Succeeded", log(v1, "fsgroup")
    for folder in (rwo, rwo / "old", file_policy):
        st = folder.stat()
        assert st.st_gid == 2000 and st.st_mode & stat.S_ISGID and st.st_mode & 0o070 == 0o070, folder
    assert (rwo / "f.txt").stat().st_gid == 2000  # inherited through the setgid folder


# -- 2. referenced objects ------------------------------------------------------------------------------


def test_a_missing_service_account_is_refused_at_create(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    body = pod("nosa", "print(1)", serviceAccountName="ghost")
    with pytest.raises(ApiException) as err:
        v1.create_namespaced_pod(NS, body)
    assert err.value.status == 403
    status = json.loads(err.value.body)
    assert status["reason"] == "Forbidden"
    assert status["message"] == ('pods "nosa" is forbidden: error looking up service account strict/ghost: '
                                 'serviceaccount "ghost" not found')
    # What a user of the real kubectl reads.
    refused = kubectl(emu, "create", "--validate=false", "-f", "-", stdin=json.dumps({**body, "apiVersion": "v1",
                                                                                      "kind": "Pod"}), ok=False)
    assert 'Error from server (Forbidden): error when creating "STDIN": pods "nosa" is forbidden: error looking ' \
           'up service account strict/ghost: serviceaccount "ghost" not found' in refused
    emu.create_service_account(NS, "ghost")
    v1.create_namespaced_pod(NS, body)
    assert done(v1, "nosa").status.phase == "Succeeded"


def test_every_namespace_has_a_default_service_account(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    emu.create_namespace("fresh-ns")
    assert v1.read_namespaced_service_account("default", "fresh-ns").metadata.name == "default"
    v1.create_namespaced_pod("fresh-ns", pod("plain", "print('fine')"))
    until("the pod in fresh-ns", lambda: v1.read_namespaced_pod("plain", "fresh-ns").status.phase == "Succeeded")


def test_a_missing_config_map_volume_keeps_the_pod_pending_with_failed_mount(v1: client.CoreV1Api) -> None:
    body = pod("cmvol", "print(open('/cfg/k').read())", volumes=[{"name": "c", "configMap": {"name": "later"}}])
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "c", "mountPath": "/cfg"}]
    v1.create_namespaced_pod(NS, body)
    message = 'MountVolume.SetUp failed for volume "c" : configmap "later" not found'
    until("FailedMount", lambda: ("Warning", "FailedMount", message) in events(v1, "cmvol"))
    p = v1.read_namespaced_pod("cmvol", NS)
    assert p.status.phase == "Pending"
    assert p.status.container_statuses[0].state.waiting.reason == "ContainerCreating"
    # kubelet keeps retrying: once the ConfigMap exists the pod runs.
    v1.create_namespaced_config_map(NS, {"metadata": {"name": "later"}, "data": {"k": "value-from-cm"}})
    assert done(v1, "cmvol").status.phase == "Succeeded"
    assert "value-from-cm" in log(v1, "cmvol")


def test_a_missing_config_map_env_ref_is_create_container_config_error(v1: client.CoreV1Api) -> None:
    body = pod("cmenv", "print(1)")
    body["spec"]["containers"][0]["env"] = [
        {"name": "A", "valueFrom": {"configMapKeyRef": {"name": "nocm", "key": "a"}}},
        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "nocm2", "key": "b", "optional": True}}}]
    v1.create_namespaced_pod(NS, body)
    assert waiting(v1, "cmenv", "CreateContainerConfigError").message == 'configmap "nocm" not found'
    assert ("Warning", "Failed", 'Error: configmap "nocm" not found') in events(v1, "cmenv")
    assert v1.read_namespaced_pod("cmenv", NS).status.phase == "Pending"


def scheduled_condition(v1: client.CoreV1Api, name: str) -> client.V1PodCondition:
    def check() -> object:
        conds = v1.read_namespaced_pod(name, NS).status.conditions or []
        return next((c for c in conds if c.type == "PodScheduled" and c.status == "False"), None)
    return until(f"{name} unschedulable", check)  # type: ignore[return-value]


def test_a_missing_or_unbound_claim_keeps_the_pod_unschedulable(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, mounted(claim_pod("noclaim", "ghost-claim")))
    cond = scheduled_condition(v1, "noclaim")
    assert cond.reason == "Unschedulable" and 'persistentvolumeclaim "ghost-claim" not found' in cond.message
    assert any(r == "FailedScheduling" and 'persistentvolumeclaim "ghost-claim" not found' in m
               for _, r, m in events(v1, "noclaim"))
    # A claim that exists but is not Bound (a class that does not exist: the volume controller leaves it Pending).
    v1.create_namespaced_persistent_volume_claim(NS, {"metadata": {"name": "unbound"}, "spec": {
        "accessModes": ["ReadWriteOnce"], "storageClassName": "no-such-class",
        "resources": {"requests": {"storage": "1Gi"}}}})
    if v1.read_namespaced_persistent_volume_claim("unbound", NS).status.phase != "Pending":
        pytest.skip("this API binds every claim at once (PVC binding not emulated yet)")
    v1.create_namespaced_pod(NS, mounted(claim_pod("unboundpod", "unbound")))
    cond = scheduled_condition(v1, "unboundpod")
    assert "pod has unbound immediate PersistentVolumeClaims" in cond.message
    # Once the class exists the claim binds, and the scheduler retries the pod.
    client.StorageV1Api(v1.api_client).create_storage_class(
        {"metadata": {"name": "no-such-class"}, "provisioner": "devstack.kube/host-path"})
    until("unboundpod scheduled", lambda: v1.read_namespaced_pod("unboundpod", NS).spec.node_name)


# -- 3. images ------------------------------------------------------------------------------------------


def test_an_unmapped_image_is_err_image_pull_then_image_pull_back_off(v1: client.CoreV1Api,
                                                                       emu: KubeEmulator) -> None:
    image = "registry.example.com/team/nope:1"
    v1.create_namespaced_pod(NS, pod("noimage", "print(1)", image=image))
    pulled = waiting(v1, "noimage", "ErrImagePull")
    assert image in pulled.message
    backoff = waiting(v1, "noimage", "ImagePullBackOff")
    assert backoff.message.startswith(f'Back-off pulling image "{image}"')
    assert v1.read_namespaced_pod("noimage", NS).status.phase == "Pending"
    seen = events(v1, "noimage")
    assert ("Normal", "Pulling", f'Pulling image "{image}"') in seen
    assert any(t == "Warning" and r == "Failed" and m.startswith(f'Failed to pull image "{image}": ')
               for t, r, m in seen)
    assert ("Warning", "Failed", "Error: ErrImagePull") in seen
    assert ("Normal", "BackOff", f'Back-off pulling image "{image}"') in seen
    assert ("Warning", "Failed", "Error: ImagePullBackOff") in seen
    described = kubectl(emu, "describe", "pod", "noimage")
    assert "ImagePullBackOff" in described and f'Back-off pulling image "{image}"' in described
    v1.delete_namespaced_pod("noimage", NS, grace_period_seconds=0)
    until("noimage deleted", lambda: not v1.list_namespaced_pod(NS, field_selector="metadata.name=noimage").items)


def test_a_missing_image_pull_secret_is_a_warning_only(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("pullsecret", "print('ran')", imagePullSecrets=[{"name": "regcred"}]))
    assert done(v1, "pullsecret").status.phase == "Succeeded"
    assert ("Warning", "FailedToRetrieveImagePullSecret", "Unable to retrieve some image pull secrets (regcred); "
            "attempting to pull the image may not succeed.") in events(v1, "pullsecret")
    assert ("Normal", "Pulled", 'Container image "example/sync:1" already present on machine') in \
        events(v1, "pullsecret")


# -- 4. subPath -----------------------------------------------------------------------------------------


def test_sub_path_is_created_on_a_writable_volume_and_fails_on_a_read_only_one(
        v1: client.CoreV1Api, emu: KubeEmulator, tmp_path: Path) -> None:
    host = tmp_path / "sub"
    host.mkdir()
    emu.create_pvc(NS, "sub", host)
    body = pod("subrw", "open('/data/x.txt','w').write('1'); print('ok')",
               volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "sub"}}])
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "d", "mountPath": "/data", "subPath": "a/b"}]
    v1.create_namespaced_pod(NS, body)
    assert done(v1, "subrw").status.phase == "Succeeded"
    assert (host / "a" / "b" / "x.txt").read_text() == "1"
    ro = pod("subro", "print('never')",
             volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "sub", "readOnly": True}}])
    ro["spec"]["containers"][0]["volumeMounts"] = [{"name": "d", "mountPath": "/data", "subPath": "missing",
                                                    "readOnly": True}]
    v1.create_namespaced_pod(NS, ro)
    state = waiting(v1, "subro", "CreateContainerConfigError")
    assert state.message == 'failed to create subPath directory for volumeMount "d" of container "main"'
    assert not (host / "missing").exists()
    assert ("Warning", "Failed", f"Error: {state.message}") in events(v1, "subro")
