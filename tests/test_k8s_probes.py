"""The emulator's prober: readiness / liveness / startup probes (httpGet, tcpSocket, exec), the pod's
readiness following them and spec.readinessGates, through the kubernetes client and the real kubectl."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from devstack.kube import KubeEmulator
from devstack.kube.prober import ContainerProber
from devstack.kube.store import Store
from tests.helpers import run_kubectl, until

NS = "probes"
PY = "python"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulator]:
    emulator = KubeEmulator(tmp_path_factory.mktemp("probes") / "emu", namespaces=[NS]).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def v1(emu: KubeEmulator) -> client.CoreV1Api:
    return emu.core_v1()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def kubectl(emu: KubeEmulator, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_kubectl(emu.kubeconfig, NS, *args, check=False, timeout=timeout)


def serve(port: int, delay: float = 0.0) -> list[str]:
    """A container command serving HTTP on the host network after ``delay`` seconds."""
    return ["sh", "-c", f"sleep {delay}; exec {PY} -m http.server {port} --bind 127.0.0.1"]


def make_pod(v1: client.CoreV1Api, name: str, container: dict, **spec: object) -> None:
    v1.create_namespaced_pod(NS, {"metadata": {"name": name}, "spec": {
        "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": "example/probe:1", **container}], **spec}})


def cond(p: client.V1Pod, type_: str) -> client.V1PodCondition | None:
    return next((c for c in p.status.conditions or [] if c.type == type_), None)


def events(v1: client.CoreV1Api, name: str, reason: str) -> list[str]:
    return [e.message for e in v1.list_namespaced_event(NS).items
            if e.involved_object.name == name and e.reason == reason]


def ready_column(emu: KubeEmulator, name: str) -> str:
    out = kubectl(emu, "get", "pod", name, "--no-headers")
    return out.stdout.split()[1]


def running(v1: client.CoreV1Api, name: str) -> client.V1Pod:
    return until("the pod to run", lambda: (p := v1.read_namespaced_pod(name, NS)).status.phase == "Running" and p)  # type: ignore[return-value]


@needs_kubectl
def test_http_readiness_probe_makes_the_pod_ready_once_it_answers(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    port = free_port()
    make_pod(v1, "web", {"command": serve(port, delay=2), "ports": [{"name": "http", "containerPort": port}],
                         "readinessProbe": {"httpGet": {"port": "http", "path": "/", "httpHeaders": [
                             {"name": "X-Probe", "value": "1"}]}, "periodSeconds": 1}})
    p = running(v1, "web")
    assert p.status.container_statuses[0].ready is False
    assert cond(p, "Ready").status == "False" and cond(p, "ContainersReady").reason == "ContainersNotReady"
    assert ready_column(emu, "web") == "0/1"
    out = kubectl(emu, "wait", "--for=condition=Ready", "pod/web", "--timeout=15s")
    assert out.returncode == 0, out.stderr
    assert ready_column(emu, "web") == "1/1"
    p = v1.read_namespaced_pod("web", NS)
    assert p.status.container_statuses[0].ready is True and cond(p, "ContainersReady").status == "True"
    # The probes before the server answered were refused, as the kubelet words it.
    assert any(m.startswith(f'Readiness probe failed: Get "http://127.0.0.1:{port}/": dial tcp 127.0.0.1:{port}: '
                            "connect: connection refused") for m in events(v1, "web", "Unhealthy"))
    v1.delete_namespaced_pod("web", NS, grace_period_seconds=0)


@needs_kubectl
def test_failing_readiness_probe_keeps_the_pod_unready(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    port = free_port()
    make_pod(v1, "web404", {"command": serve(port), "readinessProbe": {
        "httpGet": {"port": port, "path": "/missing"}, "periodSeconds": 1, "failureThreshold": 1}})
    running(v1, "web404")
    until("the readiness probe's 404 event",
          lambda: "Readiness probe failed: HTTP probe failed with statuscode: 404" in events(v1, "web404", "Unhealthy"))
    out = kubectl(emu, "wait", "--for=condition=Ready", "pod/web404", "--timeout=2s")
    assert out.returncode != 0
    p = v1.read_namespaced_pod("web404", NS)
    assert p.status.phase == "Running" and p.status.container_statuses[0].ready is False
    assert cond(p, "Ready").status == "False"
    assert ready_column(emu, "web404") == "0/1"
    v1.delete_namespaced_pod("web404", NS, grace_period_seconds=0)


@needs_kubectl
def test_readiness_gate_holds_ready_until_its_condition_is_true(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    gate = "example.com/load-balancer-attached"
    make_pod(v1, "gated", {"command": ["sleep", "60"]}, readinessGates=[{"conditionType": gate}])
    p = running(v1, "gated")
    assert p.status.container_statuses[0].ready is True and cond(p, "ContainersReady").status == "True"
    assert cond(p, "Ready").status == "False" and cond(p, "Ready").reason == "ReadinessGatesNotReady"
    assert gate in cond(p, "Ready").message
    # pods/status is writable (get / patch / update), and a strategic merge keeps the other conditions.
    sub = next(r for r in v1.get_api_resources().resources if r.name == "pods/status")
    assert set(sub.verbs) == {"get", "patch", "update"}
    v1.patch_namespaced_pod_status("gated", NS, {"status": {"conditions": [{"type": gate, "status": "False"}]}})
    assert cond(v1.read_namespaced_pod("gated", NS), "Ready").status == "False"
    v1.patch_namespaced_pod_status("gated", NS, {"status": {"conditions": [{"type": gate, "status": "True"}]}})
    out = kubectl(emu, "wait", "--for=condition=Ready", "pod/gated", "--timeout=10s")
    assert out.returncode == 0, out.stderr
    p = v1.read_namespaced_pod("gated", NS)
    assert {"PodScheduled", "ContainersReady", "Ready", gate} <= {c.type for c in p.status.conditions}
    v1.delete_namespaced_pod("gated", NS, grace_period_seconds=0)


def test_failing_liveness_probe_kills_the_container(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    port, closed = free_port(), free_port()
    make_pod(v1, "dead", {"command": serve(port), "livenessProbe": {
        "tcpSocket": {"port": closed}, "periodSeconds": 1, "failureThreshold": 2}})
    running(v1, "dead")
    p = until("the pod to fail", lambda: (p := v1.read_namespaced_pod("dead", NS)).status.phase == "Failed" and p)
    term = p.status.container_statuses[0].state.terminated  # type: ignore[attr-defined]
    assert term is not None and term.exit_code in (137, 143)
    # restartPolicy Never: kubelet's message does not promise a restart (kuberuntime_manager.go computePodActions).
    assert events(v1, "dead", "Killing") == ["Container main failed liveness probe"]
    assert f"Liveness probe failed: dial tcp 127.0.0.1:{closed}: connect: connection refused" in \
        events(v1, "dead", "Unhealthy")


def test_exec_and_tcp_probes_with_a_startup_probe(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    port = free_port()
    script = f"sleep 1; touch /scratch/ready; exec {PY} -m http.server {port} --bind 127.0.0.1"
    make_pod(v1, "mixed", {
        "command": ["sh", "-c", script], "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
        "startupProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 10},
        "readinessProbe": {"exec": {"command": ["test", "-f", "/scratch/ready"]}, "periodSeconds": 1},
        "livenessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1, "failureThreshold": 1}},
        volumes=[{"name": "scratch", "emptyDir": {}}])
    p = running(v1, "mixed")
    assert p.status.container_statuses[0].started is False  # until the startup probe passes
    p = until("the container to be ready",
              lambda: (p := v1.read_namespaced_pod("mixed", NS)).status.container_statuses[0].ready and p)
    assert p.status.container_statuses[0].started is True and cond(p, "Ready").status == "True"  # type: ignore[attr-defined]
    time.sleep(1.5)  # the liveness probe keeps passing: nothing is killed
    p = v1.read_namespaced_pod("mixed", NS)
    assert p.status.phase == "Running" and not events(v1, "mixed", "Killing")
    v1.delete_namespaced_pod("mixed", NS, grace_period_seconds=0)
    until("the pod to be gone", lambda: not [x for x in v1.list_namespaced_pod(NS).items if x.metadata.name == "mixed"])


def test_exec_probe_failure_message_is_the_command_output(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    make_pod(v1, "execfail", {"command": ["sleep", "60"], "readinessProbe": {"exec": {"command": [
        PY, "-c", "import sys; print('not ready yet'); sys.exit(1)"]}, "periodSeconds": 1}})
    running(v1, "execfail")
    until("the exec probe's event",
          lambda: "Readiness probe failed: not ready yet" in events(v1, "execfail", "Unhealthy"))
    v1.delete_namespaced_pod("execfail", NS, grace_period_seconds=0)


def test_probe_workers_end_when_stopped() -> None:
    # In-process: the workers of a container gated on a startup probe that never passes all end on stop().
    store = Store()
    pod = store.create("pods", NS, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "main"}]},
                                    "status": {"phase": "Running"}})
    closed = free_port()
    c = {"name": "main", **{kind: {"tcpSocket": {"port": closed}, "periodSeconds": 1, "failureThreshold": 100}
                            for kind in ("startupProbe", "readinessProbe", "livenessProbe")}}
    prober = ContainerProber(store, pod, c, lambda cmd: None, lambda: None, threading.Event())  # type: ignore[arg-type,return-value]
    prober.start()
    time.sleep(0.3)
    assert all(t.is_alive() for t in prober.threads) and len(prober.threads) == 3
    began = time.monotonic()
    prober.stop()
    assert not any(t.is_alive() for t in prober.threads) and time.monotonic() - began < 2
