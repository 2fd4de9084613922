"""In-cluster API access from inside the emulator's pods, as a cluster gives it: the ServiceAccount admission
plugin's projected ``kube-api-access-*`` volume, the kubelet writing its token / ca.crt / namespace files, and
the ``kubernetes`` Service's env vars, so the real ``kubernetes.config.load_incluster_config()`` in a pod
talks to the emulator's TLS port as ``system:serviceaccount:<ns>:<sa>`` and RBAC decides what it may do."""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from devstack.kube import KubeEmulator
from tests.helpers import until

NS = "satoken"
MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

# Runs in the pod: the in-cluster loader as a controller would call it, then one list of the pod's namespace.
LIST_PODS = r'''
import json, os
from kubernetes import client, config
from kubernetes.client.rest import ApiException
config.load_incluster_config()
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
ns = open(sa + "/namespace").read()
out = {"namespace": ns, "ca": open(sa + "/ca.crt").read(), "mode": oct(os.stat(sa + "/token").st_mode & 0o777),
       "env": {k: v for k, v in os.environ.items() if k.startswith("KUBERNETES_")}}
try:
    out["pods"] = [p.metadata.name for p in client.CoreV1Api().list_namespaced_pod(ns).items]
except ApiException as exc:
    out["status"], out["body"] = exc.status, json.loads(exc.body)
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulator]:
    emulator = KubeEmulator(tmp_path_factory.mktemp("satoken") / "emu", namespaces=[NS]).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def v1(emu: KubeEmulator) -> client.CoreV1Api:
    return emu.core_v1()


def pod(name: str, script: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"suite": "satoken", "case": name}},
            "spec": {"restartPolicy": "Never", **spec, "containers": [
                {"name": "main", "image": "example/sync:1", "command": ["python", "-c", script]}]}}


def finished(v1: client.CoreV1Api, name: str) -> client.V1Pod:
    return until(f"pod {name} to finish", lambda: (p := v1.read_namespaced_pod(name, NS)).status.phase
                 in ("Succeeded", "Failed") and p, timeout=30)


def log(v1: client.CoreV1Api, name: str) -> str:
    return v1.read_namespaced_pod_log(name, NS, _preload_content=False).data.decode()


def last_json(v1: client.CoreV1Api, name: str) -> dict[str, Any]:
    p = finished(v1, name)
    text = log(v1, name)
    assert p.status.phase == "Succeeded", text
    return json.loads(text.strip().splitlines()[-1])


def grant_pod_list(emu: KubeEmulator, sa: str) -> None:
    base = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NS}"
    emu.post(f"{base}/roles", {"metadata": {"name": "pod-lister"},
                               "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]})
    emu.post(f"{base}/rolebindings", {
        "metadata": {"name": f"pod-lister-{sa}"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-lister"},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": NS}]})


def tls_get(emu: KubeEmulator, path: str, token: str) -> int:
    """The status of a GET on the emulator's TLS port with ``token``, trusting its CA."""
    context = ssl.create_default_context(cafile=str(emu.state_dir / "apiserver.crt"))
    req = urllib.request.Request(f"https://127.0.0.1:{emu.tls_port}{path}",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=context) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_a_pod_lists_its_namespace_in_cluster_only_as_rbac_allows(emu: KubeEmulator, v1: client.CoreV1Api) -> None:
    for sa in ("lister", "nobody"):
        emu.create_service_account(NS, sa)
    grant_pod_list(emu, "lister")
    body = pod("allowed", LIST_PODS, serviceAccountName="lister")
    body["spec"]["initContainers"] = [{"name": "init", "image": "example/sync:1",
                                       "command": ["python", "-c", "print('init')"]}]
    created = v1.create_namespaced_pod(NS, body)
    v1.create_namespaced_pod(NS, pod("denied", LIST_PODS, serviceAccountName="nobody"))

    # What the admission plugin added: one projected volume, mounted read-only in every container.
    (volume,) = created.spec.volumes
    assert volume.name.startswith("kube-api-access-") and len(volume.name) == len("kube-api-access-") + 5
    projected = v1.api_client.sanitize_for_serialization(volume.projected)
    assert projected == {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}
    for c in [*created.spec.init_containers, *created.spec.containers]:
        assert [(m.name, m.mount_path, m.read_only) for m in c.volume_mounts] == [(volume.name, MOUNT, True)]

    ca = (emu.state_dir / "apiserver.crt").read_text()
    # The root-ca-cert-publisher's ConfigMap, in this namespace as in every one.
    assert v1.read_namespaced_config_map("kube-root-ca.crt", NS).data == {"ca.crt": ca}
    assert v1.read_namespaced_config_map("kube-root-ca.crt", "kube-system").data == {"ca.crt": ca}

    allowed = last_json(v1, "allowed")
    assert "allowed" in allowed["pods"] and "denied" in allowed["pods"], allowed
    assert allowed["namespace"] == NS
    assert allowed["ca"] == ca
    assert allowed["mode"] == "0o644"
    port = str(emu.tls_port)
    assert allowed["env"] == {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port,
        "KUBERNETES_SERVICE_PORT_HTTPS": port, "KUBERNETES_PORT": f"tcp://127.0.0.1:{port}",
        f"KUBERNETES_PORT_{port}_TCP": f"tcp://127.0.0.1:{port}", f"KUBERNETES_PORT_{port}_TCP_PROTO": "tcp",
        f"KUBERNETES_PORT_{port}_TCP_PORT": port, f"KUBERNETES_PORT_{port}_TCP_ADDR": "127.0.0.1"}

    denied = last_json(v1, "denied")
    assert denied["status"] == 403, denied
    assert denied["body"]["message"] == (
        f'pods is forbidden: User "system:serviceaccount:{NS}:nobody" cannot list resource "pods" in API group '
        f'"" in the namespace "{NS}"')


def test_explicit_env_wins_over_the_service_variables(v1: client.CoreV1Api) -> None:
    body = pod("envwins", "import os; print(os.environ['KUBERNETES_SERVICE_HOST'], os.environ['API'])")
    body["spec"]["containers"][0]["env"] = [
        {"name": "KUBERNETES_SERVICE_HOST", "value": "api.example"},
        {"name": "API", "value": "$(KUBERNETES_PORT)"}]  # expanded from the service variables, as kubelet does
    v1.create_namespaced_pod(NS, body)
    assert finished(v1, "envwins").status.phase == "Succeeded", log(v1, "envwins")
    host, api = log(v1, "envwins").split()[-2:]
    assert host == "api.example"
    assert api.startswith("tcp://127.0.0.1:"), api


PROBE_DIR = f"import os; print('present' if os.path.isdir('{MOUNT}') else 'absent')"


def test_automount_false_on_the_pod_or_its_service_account_mounts_nothing(emu: KubeEmulator,
                                                                           v1: client.CoreV1Api) -> None:
    emu.post(f"/api/v1/namespaces/{NS}/serviceaccounts",
             {"metadata": {"name": "quiet"}, "automountServiceAccountToken": False})
    cases = {"pod-off": ({"automountServiceAccountToken": False}, "absent"),
             "sa-off": ({"serviceAccountName": "quiet"}, "absent"),
             # The pod's setting wins over its ServiceAccount's.
             "pod-on": ({"serviceAccountName": "quiet", "automountServiceAccountToken": True}, "present"),
             "default-on": ({}, "present")}
    for name, (spec, _) in cases.items():
        created = v1.create_namespaced_pod(NS, pod(name, PROBE_DIR, **spec))
        mounted = bool(created.spec.volumes)
        assert mounted == (cases[name][1] == "present"), (name, created.spec.volumes)
        assert bool(created.spec.containers[0].volume_mounts) == mounted
    for name, (_, expected) in cases.items():
        assert finished(v1, name).status.phase == "Succeeded", log(v1, name)
        assert log(v1, name).split()[-1] == expected, name


def test_a_projected_token_is_refused_once_its_service_account_or_pod_is_gone(emu: KubeEmulator,
                                                                              v1: client.CoreV1Api) -> None:
    for sa in ("doomed", "keeper"):
        emu.create_service_account(NS, sa)
    show_token = f"print(open('{MOUNT}/token').read())"
    for name, sa in (("doomed-pod", "doomed"), ("keeper-pod", "keeper")):
        v1.create_namespaced_pod(NS, pod(name, show_token, serviceAccountName=sa))
    tokens = {}
    for name in ("doomed-pod", "keeper-pod"):
        assert finished(v1, name).status.phase == "Succeeded", log(v1, name)
        tokens[name] = log(v1, name).split()[-1]
        assert tls_get(emu, "/api", tokens[name]) == 200  # system:discovery lets any authenticated user in
    v1.delete_namespaced_service_account("doomed", NS)
    assert tls_get(emu, "/api", tokens["doomed-pod"]) == 401
    # The kubelet's token is bound to its pod: it stops working with the pod, though the account remains.
    v1.delete_namespaced_pod("keeper-pod", NS)
    until("keeper-pod to go", lambda: not [p for p in v1.list_namespaced_pod(NS).items
                                           if p.metadata.name == "keeper-pod"])
    assert tls_get(emu, "/api", tokens["keeper-pod"]) == 401


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root emulator switches users and chowns volumes")
def test_the_token_belongs_to_the_pods_user_and_fs_group(v1: client.CoreV1Api) -> None:
    script = (f"import os; st = os.stat('{MOUNT}/token'); open('{MOUNT}/token').read(); "
              "print(oct(st.st_mode & 0o777), st.st_uid, st.st_gid, os.getuid())")
    v1.create_namespaced_pod(NS, pod("nonroot", script, securityContext={"runAsUser": 1000, "fsGroup": 2000}))
    assert finished(v1, "nonroot").status.phase == "Succeeded", log(v1, "nonroot")
    # projected.go: 0600 for the pod's one runAsUser, then SetVolumeOwnership adds group read for fsGroup.
    assert log(v1, "nonroot").split()[-4:] == ["0o640", "1000", "2000", "1000"]


def test_projected_sources_are_written_and_a_missing_config_map_fails_the_mount(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_secret(NS, {"metadata": {"name": "creds"}, "stringData": {"user": "u1", "pass": "p1"}})
    read = ("import os, json; r = '/proj'; print(json.dumps({p: [open(os.path.join(r, p)).read(), "
            "oct(os.stat(os.path.join(r, p)).st_mode & 0o777)] for p in ['cfg/app.conf', 'user', 'labels', 'name']}))")
    body = pod("proj", read, volumes=[{"name": "all", "projected": {"defaultMode": 0o640, "sources": [
        {"configMap": {"name": "appcfg", "items": [{"key": "conf", "path": "cfg/app.conf", "mode": 0o600}]}},
        {"configMap": {"name": "absent-but-optional", "optional": True}},
        {"secret": {"name": "creds", "items": [{"key": "user", "path": "user"}]}},
        {"downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                                   {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}])
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "all", "mountPath": "/proj"}]
    v1.create_namespaced_pod(NS, body)
    message = 'MountVolume.SetUp failed for volume "all" : configmap "appcfg" not found'

    def failed_mount() -> bool:
        evs = v1.list_namespaced_event(NS, field_selector="involvedObject.name=proj").items
        return any((e.type, e.reason, e.message) == ("Warning", "FailedMount", message) for e in evs)
    until("FailedMount", failed_mount)
    assert v1.read_namespaced_pod("proj", NS).status.phase == "Pending"
    v1.create_namespaced_config_map(NS, {"metadata": {"name": "appcfg"}, "data": {"conf": "x=1"}})
    files = last_json(v1, "proj")
    assert files == {"cfg/app.conf": ["x=1", "0o600"], "user": ["u1", "0o640"],
                     "labels": ['case="proj"\nsuite="satoken"', "0o640"], "name": ["proj", "0o640"]}
