"""The real kubectl binary against the API-server emulator: get (server-side Tables), apply with the
default validation (OpenAPI v3 + fieldValidation=Strict), --dry-run=server, storage classes and PVC
binding, and keep-alive connections that survive early error answers."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.kube import KubeEmulator
from tests.helpers import run_kubectl

NS = "kc"
KUBECTL = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulator]:
    state = tmp_path_factory.mktemp("kubectl")
    emulator = KubeEmulator(state / "emu", namespaces=[NS]).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def kubectl(emu: KubeEmulator, *args: str, stdin: str | None = None, check: bool = True,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_kubectl(emu.kubeconfig, NS, *args, stdin=stdin, check=check, timeout=timeout)


def rows(text: str) -> tuple[list[str], dict[str, dict[str, str]]]:
    """kubectl's column output as (headers, {first cell: {header: cell}}); columns split on 2+ spaces."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = lines[0]
    starts = [0, *(m.end() for m in re.finditer(r" {2,}", header))]
    names = [header[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
    out = {}
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        out[cells[0]] = dict(zip(names, cells, strict=True))
    return names, out


def pod_yaml(name: str, script: str, extra: str = "") -> str:
    return f"""apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{suite: kubectl}}
spec:
  restartPolicy: Never
  containers:
  - name: main
    image: example/sync:1
    command: [python, -c, "{script}"]
{extra}"""


def jsonpath(emu: KubeEmulator, kind: str, name: str, path: str) -> str:
    return kubectl(emu, "get", kind, name, "-o", f"jsonpath={path}").stdout


def wait_for(emu: KubeEmulator, kind: str, name: str, path: str, want: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    got = ""
    while time.monotonic() < deadline:
        got = jsonpath(emu, kind, name, path)
        if got == want:
            return
        time.sleep(0.2)
    raise AssertionError(f"{kind}/{name} {path} is {got!r}, not {want!r}")


# -- 1. keep-alive after early error answers -----------------------------------------------------------

def test_unread_body_does_not_break_keep_alive(emu: KubeEmulator) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", emu.port, timeout=5)
    body = json.dumps({"kind": "SelfSubjectAccessReview", "spec": {"x": "y" * 5000}})
    conn.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=body,
                 headers={"Content-Type": "application/json"})
    first = conn.getresponse()
    assert first.status == 422  # a review without attributes is invalid (rbac.py), answered early
    first.read()
    conn.request("GET", "/version")  # the same connection: the 422's request body must not be in the way
    second = conn.getresponse()
    assert second.status == 200 and json.loads(second.read())["gitVersion"].startswith("v1.")
    # A chunked body to an unknown path, then a real request on the same connection.
    conn.putrequest("POST", "/nowhere")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.putheader("Content-Type", "application/json")
    conn.endheaders()
    for part in (b'{"a":', b'"' + b"z" * 3000 + b'"}'):
        conn.send(b"%x\r\n%s\r\n" % (len(part), part))
    conn.send(b"0\r\n\r\n")
    third = conn.getresponse()
    assert third.status == 404
    third.read()
    conn.request("GET", f"/api/v1/namespaces/{NS}")
    fourth = conn.getresponse()
    assert fourth.status == 200 and json.loads(fourth.read())["metadata"]["name"] == NS
    conn.close()


def test_kubectl_after_a_404_post(emu: KubeEmulator, tmp_path: Path) -> None:
    body = tmp_path / "review.json"
    body.write_text(json.dumps({"apiVersion": "example.com/v1", "kind": "Thing", "spec": {"big": "x" * 4000}}))
    out = kubectl(emu, "create", "--raw", "/apis/example.com/v1/things", "-f", str(body), "-v=6", check=False)
    assert out.returncode != 0 and "NotFound" in out.stderr
    assert "Unsolicited response" not in out.stderr
    # can-i (the admin: yes; tests/test_k8s_rbac.py covers RBAC), and discovery keeps working afterwards.
    can = kubectl(emu, "auth", "can-i", "get", "pods", check=False)
    assert can.returncode == 0 and can.stdout.strip() == "yes" and "Unsolicited" not in can.stderr
    assert "storageclasses" in kubectl(emu, "api-resources").stdout


# -- 2. server-side Tables ------------------------------------------------------------------------------

def test_get_pods_table_status_columns(emu: KubeEmulator) -> None:
    manifests = "\n---\n".join([
        pod_yaml("t-running", "import time; time.sleep(60)"),
        pod_yaml("t-ok", "print(1)"),
        pod_yaml("t-fail", "raise SystemExit(3)"),
        pod_yaml("t-pending", "print(1)", "  nodeSelector: {devstack/absent: 'yes'}\n"),
        pod_yaml("t-config", "print(1)", "    env:\n    - name: K\n      valueFrom: {secretKeyRef: {name: absent, "
                                         "key: k}}\n"),
        pod_yaml("t-init", "print(1)", "  initContainers:\n  - name: setup\n    image: example/sync:1\n"
                                       "    command: [python, -c, 'raise SystemExit(2)']\n"),
    ])
    kubectl(emu, "apply", "-f", "-", stdin=manifests)
    wait_for(emu, "pod", "t-ok", "{.status.phase}", "Succeeded")
    wait_for(emu, "pod", "t-fail", "{.status.phase}", "Failed")
    wait_for(emu, "pod", "t-init", "{.status.phase}", "Failed")
    wait_for(emu, "pod", "t-running", "{.status.containerStatuses[0].ready}", "true")
    wait_for(emu, "pod", "t-config", "{.status.containerStatuses[0].state.waiting.reason}",
             "CreateContainerConfigError")
    headers, table = rows(kubectl(emu, "get", "pods", "-l", "suite=kubectl").stdout)
    assert headers == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert table["t-running"]["STATUS"] == "Running" and table["t-running"]["READY"] == "1/1"
    assert table["t-ok"]["STATUS"] == "Completed" and table["t-ok"]["READY"] == "0/1"
    assert table["t-fail"]["STATUS"] == "Error"
    assert table["t-pending"]["STATUS"] == "Pending"
    assert table["t-config"]["STATUS"] == "CreateContainerConfigError"
    assert table["t-init"]["STATUS"] == "Init:Error"
    assert all(r["RESTARTS"] == "0" for r in table.values())
    wide, wtable = rows(kubectl(emu, "get", "pods", "-o", "wide", "-l", "suite=kubectl").stdout)
    assert wide[5:] == ["IP", "NODE", "NOMINATED NODE", "READINESS GATES"]
    assert wtable["t-running"]["NODE"] == "devstack-node" and wtable["t-pending"]["NODE"] == "<none>"
    # Rows carry PartialObjectMetadata: names and label selectors work as on a cluster.
    names = kubectl(emu, "get", "pods", "-o", "name", "-l", "suite=kubectl").stdout.split()
    assert set(names) == {f"pod/t-{n}" for n in ("running", "ok", "fail", "pending", "config", "init")}
    one = kubectl(emu, "get", "pod", "t-ok", "--show-labels").stdout
    assert "suite=kubectl" in one and "Completed" in one

    req = urllib.request.Request(f"{emu.server}/api/v1/namespaces/{NS}/pods?labelSelector=suite%3Dkubectl",
                                 headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        raw = json.loads(resp.read())
    assert raw["kind"] == "Table" and raw["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in raw["columnDefinitions"]][:5] == ["Name", "Ready", "Status", "Restarts", "Age"]
    assert raw["rows"][0]["object"]["kind"] == "PartialObjectMetadata"


def test_get_events_table(emu: KubeEmulator) -> None:
    kubectl(emu, "apply", "-f", "-", stdin=pod_yaml("t-events", "print(1)"))
    wait_for(emu, "pod", "t-events", "{.status.phase}", "Succeeded")
    headers, _ = rows(kubectl(emu, "get", "events").stdout)
    assert headers == ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    lines = kubectl(emu, "get", "events", "--field-selector", "involvedObject.name=t-events").stdout.splitlines()
    scheduled = [line for line in lines if "Scheduled" in line]
    assert scheduled and "Normal" in scheduled[0] and "pod/t-events" in scheduled[0]
    assert "Successfully assigned" in scheduled[0]


# -- 3. OpenAPI v3 and field validation ------------------------------------------------------------------

def test_apply_validates_with_openapi(emu: KubeEmulator) -> None:
    with urllib.request.urlopen(f"{emu.server}/openapi/v3", timeout=5) as resp:
        index = json.loads(resp.read())["paths"]
    assert {"api/v1", "apis/storage.k8s.io/v1", "apis/batch/v1"} <= set(index)
    with urllib.request.urlopen(emu.server + index["api/v1"]["serverRelativeURL"], timeout=30) as resp:
        doc = json.loads(resp.read())
    pod = doc["components"]["schemas"]["io.k8s.api.core.v1.Pod"]
    assert pod["x-kubernetes-group-version-kind"] == [{"group": "", "version": "v1", "kind": "Pod"}]
    with pytest.raises(urllib.error.HTTPError) as v2:
        urllib.request.urlopen(f"{emu.server}/openapi/v2", timeout=5)
    assert v2.value.code == 404

    good = kubectl(emu, "apply", "-f", "-", stdin=pod_yaml("v-good", "print(1)"))  # default --validate=strict
    assert "pod/v-good created" in good.stdout
    bad = kubectl(emu, "apply", "-f", "-", check=False,
                  stdin=pod_yaml("v-bad", "print(1)").replace("    image:", "    imagee:"))
    assert bad.returncode != 0
    assert 'unknown field "spec.containers[0].imagee"' in bad.stderr
    assert kubectl(emu, "get", "pod", "v-bad", check=False).returncode != 0
    # --validate=warn: the server answers with a Warning header that kubectl prints, then its own checks.
    warned = kubectl(emu, "apply", "--validate=warn", "-f", "-", check=False,
                     stdin=pod_yaml("v-warn", "print(1)").replace("restartPolicy: Never", "restartPolicy: Never\n"
                                                                  "  nodeSelectorr: {a: b}"))
    assert 'Warning: unknown field "spec.nodeSelectorr"' in warned.stderr and warned.returncode == 0
    # Applying a change to an existing object is a (strategic merge) PATCH with fieldValidation=Strict.
    changed = kubectl(emu, "apply", "-f", "-",
                      stdin=pod_yaml("v-good", "print(1)").replace("suite: kubectl", "suite: kubectl, step: two"))
    assert "pod/v-good configured" in changed.stdout
    assert jsonpath(emu, "pod", "v-good", "{.metadata.labels.step}") == "two"
    explained = kubectl(emu, "explain", "pod.spec.containers.image").stdout
    assert "Container image name" in explained


# -- 4. --dry-run=server ---------------------------------------------------------------------------------

def test_dry_run_server(emu: KubeEmulator) -> None:
    applied = kubectl(emu, "apply", "--dry-run=server", "-f", "-", stdin=pod_yaml("d-apply", "print(1)"))
    assert "pod/d-apply created (server dry run)" in applied.stdout
    created = kubectl(emu, "create", "--dry-run=server", "-o", "json", "-f", "-",
                      stdin=pod_yaml("d-create", "print(1)"))
    obj = json.loads(created.stdout)
    assert obj["spec"]["restartPolicy"] == "Never" and obj["spec"]["schedulerName"] == "default-scheduler"
    # Checks still run: a bad field or an existing name is refused without storing anything.
    bad = kubectl(emu, "create", "--dry-run=server", "-f", "-", check=False,
                  stdin=pod_yaml("d-bad", "print(1)").replace("    image:", "    imagee:"))
    assert bad.returncode != 0 and "imagee" in bad.stderr
    for name in ("d-apply", "d-create", "d-bad"):
        assert kubectl(emu, "get", "pod", name, check=False).returncode != 0
    kubectl(emu, "apply", "-f", "-", stdin=pod_yaml("d-keep", "import time; time.sleep(60)"))
    again = kubectl(emu, "create", "--dry-run=server", "-f", "-", check=False,
                    stdin=pod_yaml("d-keep", "print(1)"))
    assert "AlreadyExists" in again.stderr
    deleted = kubectl(emu, "delete", "pod", "d-keep", "--dry-run=server")
    assert "(server dry run)" in deleted.stdout
    assert jsonpath(emu, "pod", "d-keep", "{.metadata.name}") == "d-keep"
    assert jsonpath(emu, "pod", "d-keep", "{.metadata.deletionTimestamp}") == ""
    kubectl(emu, "delete", "pod", "d-keep", "--grace-period=0")


# -- 5. storage classes and PVC binding --------------------------------------------------------------------

CLAIMS = """apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: block}
provisioner: devstack.kube/host-path
parameters: {devstack.kube/access-modes: ReadWriteOnce}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: rwx-block}
spec: {storageClassName: block, accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: rwo-block}
spec: {storageClassName: block, accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: rwx-default}
spec: {accessModes: [ReadWriteMany], resources: {requests: {storage: 2Gi}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: no-class}
spec: {storageClassName: "", accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}
"""


def test_storage_classes_and_pvc_binding(emu: KubeEmulator, tmp_path: Path) -> None:
    _, classes = rows(kubectl(emu, "get", "storageclass").stdout)
    assert classes["standard (default)"]["PROVISIONER"] == "devstack.kube/host-path"
    kubectl(emu, "apply", "-f", "-", stdin=CLAIMS)
    headers, claims = rows(kubectl(emu, "get", "pvc").stdout)
    assert headers == ["NAME", "STATUS", "VOLUME", "CAPACITY", "ACCESS MODES", "STORAGECLASS", "AGE"]
    assert claims["rwx-block"]["STATUS"] == "Pending"
    assert claims["rwo-block"]["STATUS"] == "Bound" and claims["rwo-block"]["ACCESS MODES"] == "RWO"
    assert claims["rwo-block"]["VOLUME"].startswith("pvc-") and claims["rwo-block"]["CAPACITY"] == "1Gi"
    assert claims["rwx-default"]["STATUS"] == "Bound" and claims["rwx-default"]["STORAGECLASS"] == "standard"
    assert claims["no-class"]["STATUS"] == "Pending"
    events = kubectl(emu, "get", "events", "--field-selector", "involvedObject.kind=PersistentVolumeClaim").stdout
    rwx = [line for line in events.splitlines() if "persistentvolumeclaim/rwx-block" in line]
    assert rwx and "ProvisioningFailed" in rwx[0] and "Warning" in rwx[0] and "ReadWriteMany" in rwx[0]
    none = [line for line in events.splitlines() if "persistentvolumeclaim/no-class" in line]
    assert none and "FailedBinding" in none[0] and "no storage class is set" in none[0]
    # The emulator's own helper still makes Bound claims backed by a host folder.
    emu.create_pvc(NS, "helper-claim", tmp_path)
    assert jsonpath(emu, "pvc", "helper-claim", "{.status.phase}") == "Bound"
    # A class that comes later (offering RWX) binds the claim waiting for it, as the controller's resync does.
    kubectl(emu, "apply", "-f", "-", stdin="""apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: later}
spec: {storageClassName: shared, accessModes: [ReadWriteMany], resources: {requests: {storage: 1Gi}}}
""")
    assert jsonpath(emu, "pvc", "later", "{.status.phase}") == "Pending"
    kubectl(emu, "apply", "-f", "-", stdin="""apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: shared}
provisioner: devstack.kube/host-path
parameters: {devstack.kube/access-modes: "ReadWriteOnce,ReadWriteMany"}
""")
    assert jsonpath(emu, "pvc", "later", "{.status.phase}") == "Bound"
    # storage.k8s.io/v1 has its OpenAPI document too: kubectl's strict validation covers classes.
    typo = kubectl(emu, "apply", "-f", "-", check=False, stdin="""apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: typo}
provisioner: devstack.kube/host-path
volumeBindingModee: Immediate
""")
    assert typo.returncode != 0 and 'unknown field "volumeBindingModee"' in typo.stderr


def test_get_watch_prints_table_rows(emu: KubeEmulator) -> None:
    cmd = [str(KUBECTL), "--kubeconfig", str(emu.kubeconfig), "--cache-dir", str(emu.state_dir / "kcache"),
           "-n", NS, "get", "pods", "-w", "-l", "suite=watch", "--request-timeout=20s"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        kubectl(emu, "apply", "-f", "-", stdin=pod_yaml("w-pod", "print(1)").replace("suite: kubectl", "suite: watch"))
        wait_for(emu, "pod", "w-pod", "{.status.phase}", "Succeeded")
        time.sleep(0.5)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines.count(lines[0]) == 1  # the columns come once, with the first event
    statuses = [line.split()[2] for line in lines[1:] if line.startswith("w-pod")]
    assert statuses[0] == "Pending" and statuses[-1] == "Completed"


def test_table_include_object(emu: KubeEmulator) -> None:
    def get(include: str) -> dict:
        req = urllib.request.Request(f"{emu.server}/api/v1/namespaces?includeObject={include}",
                                     headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())
    assert get("Object")["rows"][0]["object"]["kind"] == "Namespace"
    assert "object" not in get("None")["rows"][0]
    assert get("Metadata")["rows"][0]["object"]["kind"] == "PartialObjectMetadata"
    # Without the Table media type the list is the plain object list, as before.
    with urllib.request.urlopen(f"{emu.server}/api/v1/namespaces", timeout=5) as resp:
        assert json.loads(resp.read())["kind"] == "NamespaceList"


def test_secret_and_configmap_tables(emu: KubeEmulator) -> None:
    kubectl(emu, "create", "secret", "generic", "tbl-secret", "--from-literal=a=1", "--from-literal=b=2")
    kubectl(emu, "create", "configmap", "tbl-cm", "--from-literal=a=1")
    headers, secrets = rows(kubectl(emu, "get", "secrets").stdout)
    assert headers == ["NAME", "TYPE", "DATA", "AGE"]
    assert secrets["tbl-secret"]["TYPE"] == "Opaque" and secrets["tbl-secret"]["DATA"] == "2"
    headers, maps = rows(kubectl(emu, "get", "configmaps").stdout)
    assert headers == ["NAME", "DATA", "AGE"] and maps["tbl-cm"]["DATA"] == "1"
