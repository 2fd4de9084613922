"""The emulator runs a fleet for real: apps/v1 Deployments, Services with a loopback ClusterIP proxy, and
discovery.k8s.io/v1 EndpointSlices, each pod on its own loopback IP; through the real kubectl, the
kubernetes client and plain HTTP; and the local stack's Triton as a Deployment of real tritonservers."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config, watch

from devstack.kube import KubeEmulator
from devstack.stack import image_runtime
from tests.helpers import run_kubectl

NS = "fleet"
GATE = "triton-rollout/serving"
needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")

# A tiny HTTP server that names its pod, bound to the pod's IP from the downward API (as an app in a pod
# binds its pod's address); one request per connection, so the proxy's choice shows on every request.
ECHO = """
import http.server, os
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = os.environ["HOSTNAME"].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer((os.environ["POD_IP"], 8080), H).serve_forever()
"""


def echo_deployment(name: str, replicas: int, gates: bool = False) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {"containers": [{
        "name": "echo", "image": "localhost/echo:1", "command": ["python", "-c", ECHO],
        "ports": [{"name": "http", "containerPort": 8080}],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
    }], "terminationGracePeriodSeconds": 2}
    if gates:
        pod_spec["readinessGates"] = [{"conditionType": GATE}]
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": NS},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec}}}


def service(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": NS},
            "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}}


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulator]:
    emulator = KubeEmulator(tmp_path_factory.mktemp("fleet") / "emu", namespaces=[NS], images=[image_runtime()],
                            pod_network=True).start()
    try:
        yield emulator
    finally:
        emulator.stop()


def kubectl(emu: KubeEmulator, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return run_kubectl(emu.kubeconfig, NS, *args, **kw)


def get(emu: KubeEmulator, *what: str, kubeconfig: Path | None = None) -> Any:
    return json.loads(run_kubectl(kubeconfig or emu.kubeconfig, NS, "get", *what, "-o", "json").stdout)


def wait_for(check: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def ask(host: str, port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """One request on a new connection: (status, body)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def answer(host: str, port: int, path: str = "/") -> tuple[int, str] | None:
    """``ask``, or None while nothing listens there yet (a server starting or restarting)."""
    try:
        return ask(host, port, path)
    except OSError:
        return None


def pods_of(emu: KubeEmulator, app: str) -> list[dict[str, Any]]:
    return [p for p in get(emu, "pods", "-l", f"app={app}")["items"] if not p["metadata"].get("deletionTimestamp")]


def slice_endpoints(emu: KubeEmulator, svc: str) -> dict[str, dict[str, Any]]:
    """pod name -> endpoint, over the Service's EndpointSlices."""
    slices = get(emu, "endpointslices", "-l", f"kubernetes.io/service-name={svc}")["items"]
    return {ep["targetRef"]["name"]: ep for s in slices for ep in s["endpoints"]}


def listeners(ip: str) -> list[str]:
    """`ss -ltnpH` lines of the TCP sockets listening on ``ip`` (also as an IPv4-mapped IPv6 address, as
    Triton's gRPC server binds it)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return [line for line in out.splitlines() if line.split()[3].rsplit(":", 1)[0] in (ip, f"[::ffff:{ip}]")]


def apply(emu: KubeEmulator, *docs: dict[str, Any]) -> str:
    return kubectl(emu, "apply", "-f", "-", stdin=yaml.safe_dump_all(docs)).stdout


@needs_kubectl
def test_deployment_service_and_endpointslices_with_kubectl(emu: KubeEmulator) -> None:
    # kubectl apply validates both against the served OpenAPI schemas (no --validate=false).
    out = apply(emu, echo_deployment("echo", 2), service("echo"))
    assert "deployment.apps/echo created" in out and "service/echo created" in out
    rollout = kubectl(emu, "rollout", "status", "deploy/echo", "--timeout=60s").stdout
    assert 'deployment "echo" successfully rolled out' in rollout
    table = kubectl(emu, "get", "deploy", "echo").stdout.split()
    assert table[:5] == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"] and table[6:9] == ["2/2", "2", "2"]
    pods = pods_of(emu, "echo")
    ips = sorted(p["status"]["podIP"] for p in pods)
    assert len(set(ips)) == 2 and all(re.fullmatch(r"127\.\d+\.\d+\.\d+", ip) and ip != "127.0.0.1" for ip in ips)
    assert all(p["status"]["podIPs"] == [{"ip": p["status"]["podIP"]}] for p in pods)
    assert all(p["metadata"]["ownerReferences"][0]["kind"] == "Deployment" for p in pods)
    # Each replica answers on its own IP and the container port, and binds nothing else.
    for pod in pods:
        assert ask(pod["status"]["podIP"], 8080) == (200, pod["metadata"]["name"])
        assert len(listeners(pod["status"]["podIP"])) == 1
    svc = get(emu, "service", "echo")
    cluster_ip = svc["spec"]["clusterIP"]
    assert cluster_ip.startswith("127.") and cluster_ip != "127.0.0.1" and svc["spec"]["clusterIPs"] == [cluster_ip]
    assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"][0]["protocol"] == "TCP"
    printed = kubectl(emu, "get", "svc", "echo").stdout
    assert cluster_ip in printed and "80/TCP" in printed
    # The EndpointSlice: both pods, ready, with targetRef and nodeName; kubectl prints their addresses.
    endpoints = slice_endpoints(emu, "echo")
    assert set(endpoints) == {p["metadata"]["name"] for p in pods}
    for pod in pods:
        ep = endpoints[pod["metadata"]["name"]]
        assert ep["addresses"] == [pod["status"]["podIP"]] and ep["nodeName"] == pod["spec"]["nodeName"]
        assert ep["conditions"] == {"ready": True, "serving": True, "terminating": False}
        assert ep["targetRef"] == {"kind": "Pod", "namespace": NS, "name": pod["metadata"]["name"],
                                   "uid": pod["metadata"]["uid"]}
    slices = kubectl(emu, "get", "endpointslices", "-l", "kubernetes.io/service-name=echo").stdout
    assert all(ip in slices for ip in ips) and "IPv4" in slices and "8080" in slices
    # Through the Service address: every request answered, spread over both replicas (round-robin).
    seen = Counter(ask(cluster_ip, 80)[1] for _ in range(20))
    assert set(seen) == {p["metadata"]["name"] for p in pods} and min(seen.values()) >= 8, seen

    # kubectl scale (the scale subresource): three endpoints, then one.
    kubectl(emu, "scale", "deploy/echo", "--replicas=3")
    kubectl(emu, "rollout", "status", "deploy/echo", "--timeout=60s")
    assert get(emu, "deploy", "echo")["status"]["readyReplicas"] == 3
    wait_for(lambda: len(slice_endpoints(emu, "echo")) == 3, "three endpoints")
    # A rolling update (kubectl rollout restart changes the template) within the 25% defaults: maxSurge 1,
    # maxUnavailable 0, so three ready endpoints are listed at every moment while every pod is replaced.
    before = {p["metadata"]["name"] for p in pods_of(emu, "echo")}
    ready_counts: list[int] = []
    done = threading.Event()

    def sample() -> None:
        url = f"{emu.server}/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"
        while not done.is_set():
            with urllib.request.urlopen(url + "?labelSelector=kubernetes.io/service-name%3Decho", timeout=5) as r:
                slices = json.loads(r.read())["items"]
            ready_counts.append(sum(1 for s in slices for ep in s["endpoints"] if ep["conditions"]["ready"]))
            time.sleep(0.02)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        kubectl(emu, "rollout", "restart", "deploy/echo")
        kubectl(emu, "rollout", "status", "deploy/echo", "--timeout=60s")
        wait_for(lambda: len(pods_of(emu, "echo")) == 3 and set(slice_endpoints(emu, "echo")).isdisjoint(before) and
                 len(slice_endpoints(emu, "echo")) == 3, "every pod replaced")
    finally:
        done.set()
        sampler.join(timeout=10)
    assert len(ready_counts) > 10 and min(ready_counts) >= 3, Counter(ready_counts)
    assert Counter(ask(cluster_ip, 80)[0] for _ in range(6)) == {200: 6}
    kubectl(emu, "scale", "deploy/echo", "--replicas=1")
    wait_for(lambda: len(pods_of(emu, "echo")) == 1 and len(slice_endpoints(emu, "echo")) == 1, "one replica")
    kubectl(emu, "delete", "deploy/echo", "service/echo")
    wait_for(lambda: not get(emu, "pods", "-l", "app=echo")["items"], "the pods garbage-collected")
    wait_for(lambda: not get(emu, "endpointslices", "-l", "kubernetes.io/service-name=echo")["items"],
             "the slices garbage-collected")
    wait_for(lambda: not listeners(cluster_ip), "the Service's proxy closed")


@needs_kubectl
def test_a_deleted_or_failed_replica_is_replaced(emu: KubeEmulator) -> None:
    apply(emu, echo_deployment("heal", 2), service("heal"))
    kubectl(emu, "rollout", "status", "deploy/heal", "--timeout=60s")
    first, second = sorted(pods_of(emu, "heal"), key=lambda p: p["metadata"]["name"])
    kubectl(emu, "delete", "pod", first["metadata"]["name"], "--wait=false")
    kubectl(emu, "rollout", "status", "deploy/heal", "--timeout=60s")

    def replaced() -> list[dict[str, Any]] | None:
        now = pods_of(emu, "heal")
        names = {p["metadata"]["name"] for p in now}
        ready = all(e["conditions"]["ready"] for e in slice_endpoints(emu, "heal").values())
        return now if len(now) == 2 and first["metadata"]["name"] not in names and \
            set(slice_endpoints(emu, "heal")) == names and ready else None
    now = wait_for(replaced, "a replacement pod in the EndpointSlice")
    new = next(p for p in now if p["metadata"]["name"] != second["metadata"]["name"])
    assert ask(new["status"]["podIP"], 8080) == (200, new["metadata"]["name"])
    # A container that dies is restarted in place (restartPolicy Always): same pod, same IP.
    pid = int(re.search(r"pid=(\d+)", listeners(second["status"]["podIP"])[0])[1])  # type: ignore[index]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: next(p for p in pods_of(emu, "heal") if p["metadata"]["name"] == second["metadata"]["name"])
             ["status"]["containerStatuses"][0]["restartCount"] == 1, "the container restarted")
    wait_for(lambda: answer(second["status"]["podIP"], 8080) == (200, second["metadata"]["name"]), "it answers again")
    kubectl(emu, "delete", "deploy/heal", "service/heal")


def _watch_slices(kubeconfig: Path, svc: str, events: queue.Queue[dict[str, Any]], stop: threading.Event) -> None:
    api = client.DiscoveryV1Api(config.new_client_from_config(config_file=str(kubeconfig)))
    w = watch.Watch()
    for event in w.stream(api.list_namespaced_endpoint_slice, NS, label_selector=f"kubernetes.io/service-name={svc}",
                          timeout_seconds=60):
        obj = event["object"]
        events.put({ep.target_ref.name: ep.conditions.ready for ep in obj.endpoints or []})
        if stop.is_set():
            w.stop()


@needs_kubectl
def test_readiness_gate_drains_a_pod_from_the_slice_and_the_proxy(emu: KubeEmulator, tmp_path: Path) -> None:
    # The rollout's identity: least privilege, as a cluster's RBAC would hold it.
    rbac = [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "drainer", "namespace": NS},
         "rules": [{"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"]},
                   {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                   # kubectl patch --subresource=status reads the subresource first.
                   {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["get", "patch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": "drainer", "namespace": NS},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "drainer"},
         "subjects": [{"kind": "ServiceAccount", "name": "drainer", "namespace": NS}]},
    ]
    apply(emu, *rbac)
    sa = emu.service_account_kubeconfig(NS, "drainer", tmp_path / "kubeconfig-drainer")
    assert run_kubectl(sa, NS, "auth", "can-i", "watch", "endpointslices.discovery.k8s.io").stdout.strip() == "yes"
    assert run_kubectl(sa, NS, "auth", "can-i", "delete", "deployments.apps", check=False).stdout.strip() == "no"

    apply(emu, echo_deployment("gated", 2, gates=True), service("gated"))
    denied = run_kubectl(sa, NS, "get", "deploy/gated", check=False)
    assert denied.returncode != 0 and 'cannot get resource "deployments" in API group "apps"' in denied.stderr
    pods = wait_for(lambda: (ps := pods_of(emu, "gated")) and len(ps) == 2 and all(
        p["status"].get("containerStatuses", [{}])[0].get("ready") for p in ps) and ps, "containers ready")
    # Containers ready, but the gate's condition is missing: not Ready, not in the proxy's rotation.
    assert all(p["status"]["conditions"][-1]["type"] != GATE for p in pods)
    wait_for(lambda: len(slice_endpoints(emu, "gated")) == 2, "both endpoints listed")
    assert not any(e["conditions"]["ready"] for e in slice_endpoints(emu, "gated").values())
    assert get(emu, "deploy", "gated")["status"].get("readyReplicas", 0) == 0
    cluster_ip = get(emu, "service", "gated")["spec"]["clusterIP"]
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        ask(cluster_ip, 80)  # no ready endpoint: the connection is refused / closed without an answer

    def set_gate(pod: dict[str, Any], status: str) -> None:
        patch = {"status": {"conditions": [{"type": GATE, "status": status}]}}
        run_kubectl(sa, NS, "patch", "pod", pod["metadata"]["name"], "--subresource=status", "--type=strategic",
                    "-p", json.dumps(patch))

    for pod in pods:
        set_gate(pod, "True")
    kubectl(emu, "rollout", "status", "deploy/gated", "--timeout=30s")
    drained, other = pods[0]["metadata"]["name"], pods[1]["metadata"]["name"]
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_slices, args=(sa, "gated", events, stop), daemon=True)
    watcher.start()

    def observe(want: dict[str, bool]) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if events.get(timeout=0.5) == want:
                    return
            except queue.Empty:
                pass
        raise AssertionError(f"the EndpointSlice watch never showed {want}")

    try:
        observe({drained: True, other: True})
        set_gate(pods[0], "False")
        observe({drained: False, other: True})  # the drain, as the rollout sees it through its watch
        pod = get(emu, "pod", drained)
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "False" and ready["reason"] == "ReadinessGatesNotReady"
        # From now on no new connection reaches the drained pod; it still answers on its own IP.
        after = Counter(ask(cluster_ip, 80)[1] for _ in range(30))
        assert after == Counter({other: 30}), after
        assert ask(pods[0]["status"]["podIP"], 8080) == (200, drained)
        # Back in, this time through the kubernetes client (what the rollout uses): a strategic merge of
        # status.conditions by type, the pod's other conditions kept.
        core = client.CoreV1Api(config.new_client_from_config(config_file=str(sa)))
        core.patch_namespaced_pod_status(drained, NS, {"status": {"conditions": [{"type": GATE, "status": "True"}]}})
        observe({drained: True, other: True})
        types = [c["type"] for c in get(emu, "pod", drained)["status"]["conditions"]]
        assert {"PodScheduled", "Initialized", "ContainersReady", "Ready", GATE} <= set(types), types
        back = Counter(ask(cluster_ip, 80)[1] for _ in range(20))
        assert set(back) == {drained, other}, back
    finally:
        stop.set()
        kubectl(emu, "delete", "deploy/gated", "service/gated")
        watcher.join(timeout=70)


def test_triton_fleet_on_the_local_stack(tmp_path: Path) -> None:
    """LocalStack(triton_replicas=2): the project's rendered Triton Deployment + Service as real tritonservers
    on their pod IPs, TRITON_URL the Service; a model loaded on one replica shows the proxy spreading."""
    from devstack.demo_models import write_tensor_release
    from devstack.stack import LocalStack
    from devstack.triton import install

    install()
    stack = LocalStack(tmp_path / "stack", s3_kind="seaweedfs", triton_replicas=2)
    ips: list[str] = []
    try:
        stack.start()
        assert stack.triton is None and stack.env()["TRITON_URL"] == stack.triton_url
        assert stack.kube is not None
        kc = stack.kube.kubeconfig
        run_kubectl(kc, "triton", "rollout", "status", "deploy/triton", "--timeout=10s")
        deploy = json.loads(run_kubectl(kc, "triton", "get", "deploy", "triton", "-o", "json").stdout)
        assert deploy["status"]["readyReplicas"] == deploy["status"]["updatedReplicas"] == 2
        pods = json.loads(run_kubectl(kc, "triton", "get", "pods", "-l", "app.kubernetes.io/name=triton", "-o",
                                      "json").stdout)["items"]
        ips[:] = [p["status"]["podIP"] for p in pods]
        assert len(set(ips)) == 2 and "127.0.0.1" not in ips
        for ip in ips:
            assert ask(ip, 8000, "/v2/health/live")[0] == 200
            lines = listeners(ip)
            # http, grpc and metrics on the pod IP, the manifest's container ports; nothing on 0.0.0.0.
            assert sorted(int(line.split()[3].rsplit(":", 1)[1]) for line in lines) == [8000, 8001, 8002]
            assert all("tritonserver" in line for line in lines)
        wide = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        assert not [line for line in wide.splitlines() if "tritonserver" in line and
                    line.split()[3].startswith(("0.0.0.0:", "*:", "[::]:"))]
        host, port = stack.triton_url.removeprefix("http://").rsplit(":", 1)
        # A model on one replica only (its pod IP): through the Service, about half the answers have it.
        release = write_tensor_release(tmp_path / "release", 1)
        repo = stack.pvc / "repository" / "demo_tensor"
        (repo / "1").mkdir(parents=True)
        for f in (release / "demo_tensor").iterdir():
            shutil.copy2(f, repo / f.name if f.name == "config.pbtxt" else repo / "1" / f.name)
        conn = http.client.HTTPConnection(ips[0], 8000, timeout=30)
        conn.request("POST", "/v2/repository/models/demo_tensor/load", body=b"{}")
        assert conn.getresponse().status == 200
        conn.close()
        seen = Counter(ask(host, int(port), "/v2/models/demo_tensor/ready")[0] for _ in range(20))
        assert seen[200] >= 8 and seen[400] >= 8, seen
        # SIGKILL the other replica's server: the kubelet restarts it in its pod, on the same IP, and with
        # --load-model=* it comes back with what the repository holds; the Service then answers only 200.
        other = next(p for p in pods if p["status"]["podIP"] == ips[1])
        pid = int(re.search(r"pid=(\d+)", listeners(ips[1])[0])[1])  # type: ignore[index]
        os.kill(pid, signal.SIGKILL)

        def back() -> bool:
            pod = json.loads(run_kubectl(kc, "triton", "get", "pod", other["metadata"]["name"], "-o",
                                         "json").stdout)
            ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"]["conditions"])
            return ready and pod["status"]["containerStatuses"][0]["restartCount"] == 1 and \
                pod["status"]["podIP"] == ips[1]
        wait_for(back, "the killed replica restarted and Ready on its IP", timeout=60)
        assert Counter(ask(host, int(port), "/v2/models/demo_tensor/ready")[0] for _ in range(10)) == {200: 10}
    finally:
        stack.stop()
    assert not [ip for ip in ips if listeners(ip)], "a tritonserver outlived the stack"
