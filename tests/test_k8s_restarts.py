"""Container restarts in the emulator's kubelet (devstack/kube/kubelet.py), as a cluster user sees them
through the real kubectl and the kubernetes client: restartPolicy Always / OnFailure / Never per container,
the kubelet's exponential back-off with CrashLoopBackOff, restartCount and lastState, the BackOff /
Created / Started / Killing events, a Job pod restarted in place under OnFailure (and counted against
backoffLimit), and a failed liveness probe restarting its container.

The emulator runs with a short back-off (``restart_backoff`` 0.5 s doubling to 4 s) so the tests take
seconds; the default, the kubelet's 10 s doubling to 5 min, is checked on its own."""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client, watch

from devstack.kube import KubeEmulator
from devstack.kube.kubelet import RestartBackoff, go_duration
from tests.helpers import run_kubectl, until

NS = "restarts"
BASE, CAP = 0.5, 4.0
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulator]:
    emulator = KubeEmulator(tmp_path_factory.mktemp("restarts") / "emu", namespaces=[NS],
                            restart_backoff=(BASE, CAP)).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def v1(emu: KubeEmulator) -> client.CoreV1Api:
    return emu.core_v1()


@pytest.fixture(scope="module")
def batch(emu: KubeEmulator) -> client.BatchV1Api:
    return emu.batch_v1()


def kubectl(emu: KubeEmulator, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_kubectl(emu.kubeconfig, NS, *args, check=check, timeout=timeout)


def make_pod(v1: client.CoreV1Api, name: str, script: str, *, policy: str | None = None, scratch: bool = False,
             **container: Any) -> client.V1Pod:
    """A one-container pod running ``script``; ``scratch``: with an emptyDir at /scratch."""
    if scratch:
        container["volumeMounts"] = [{"name": "s", "mountPath": "/scratch"}]
    spec: dict[str, Any] = {"terminationGracePeriodSeconds": 1, "containers": [
        {"name": "main", "image": "example/app:1", "command": ["sh", "-c", script], **container}]}
    if scratch:
        spec["volumes"] = [{"name": "s", "emptyDir": {}}]
    if policy is not None:  # None: the API's default, Always
        spec["restartPolicy"] = policy
    return v1.create_namespaced_pod(NS, {"metadata": {"name": name}, "spec": spec})


def events(v1: client.CoreV1Api, name: str, reason: str) -> list[client.CoreV1Event]:
    return [e for e in v1.list_namespaced_event(NS, field_selector=f"involvedObject.name={name}").items
            if e.reason == reason]


def delete_and_wait(v1: client.CoreV1Api, name: str) -> None:
    v1.delete_namespaced_pod(name, NS, grace_period_seconds=0)
    until(f"pod {name} gone", lambda: name not in {p.metadata.name for p in v1.list_namespaced_pod(NS).items})


def status_of(v1: client.CoreV1Api, name: str) -> client.V1ContainerStatus:
    return v1.read_namespaced_pod(name, NS).status.container_statuses[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_restart_backoff_is_the_kubelets_by_default() -> None:
    # pkg/kubelet/kubelet.go backOffPeriod 10 s, MaxContainerBackOff 300 s; flowcontrol doubles per restart.
    assert KubeEmulator.__dataclass_fields__["restart_backoff"].default == (10.0, 300.0)
    backoff, now, holds = RestartBackoff(10.0, 300.0), 0.0, []
    for _ in range(8):
        now += 1.0  # the container ran 1 s, then exited
        hold = backoff.hold(now)
        holds.append(hold)
        now += hold
        backoff.next(now - hold, now)
    assert holds == [0, 10, 20, 40, 80, 160, 300, 300]
    # A container that ran longer than twice the cap since its last restart starts over.
    assert backoff.hold(now + 601) == 0
    assert [go_duration(s) for s in (0.5, 10, 80, 300)] == ["500ms", "10s", "1m20s", "5m0s"]


@needs_kubectl
def test_crash_looping_pod_backs_off_in_crash_loop_back_off(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    pod = make_pod(v1, "crash", "echo crashing; exit 3")  # restartPolicy defaults to Always
    uid = pod.metadata.uid
    # Watch the pod as a controller would: every status the kubelet writes, with when it arrived.
    seen: list[tuple[float, client.V1Pod]] = []
    stream = watch.Watch()
    for ev in stream.stream(v1.list_namespaced_pod, NS, field_selector="metadata.name=crash", timeout_seconds=30):
        p = ev["object"]
        seen.append((time.monotonic(), p))
        statuses = p.status.container_statuses or []
        if statuses and (statuses[0].restart_count or 0) >= 4:
            stream.stop()
    phases = {p.status.phase for _, p in seen}
    assert "Running" in phases and not phases & {"Succeeded", "Failed"}  # Always: the pod never ends
    # When each restart happened, and the back-off the kubelet announced before it.
    restarted: dict[int, float] = {}
    waits: list[str] = []
    for at, p in seen:
        st = (p.status.container_statuses or [None])[0]
        if st is None:
            continue
        restarted.setdefault(st.restart_count or 0, at)
        waiting = st.state.waiting
        if waiting is not None and waiting.reason == "CrashLoopBackOff":
            assert st.ready is False and st.last_state.terminated.exit_code == 3
            if waiting.message not in waits:
                waits.append(waiting.message)
    assert sorted(restarted)[:5] == [0, 1, 2, 3, 4]
    # The first restart is immediate; after that each waits the back-off, doubling: 0.5 s, 1 s, 2 s.
    gaps = [restarted[n + 1] - restarted[n] for n in range(1, 4)]
    for gap, delay in zip(gaps, (BASE, 2 * BASE, 4 * BASE), strict=True):
        assert delay - 0.1 <= gap < delay + 3.0, (gaps, delay)
    assert waits[:3] == [f"back-off {d} restarting failed container=main pod=crash_{NS}({uid})"
                         for d in ("500ms", "1s", "2s")]

    st = status_of(v1, "crash")
    last = st.last_state.terminated
    assert last.exit_code == 3 and last.reason == "Error" and last.started_at and last.finished_at
    assert st.restart_count >= 4

    # kubectl get pods: CrashLoopBackOff and "N (AGE ago)" while the container is held back.
    def crash_row() -> list[str] | None:
        out = kubectl(emu, "get", "pod", "crash", "--no-headers").stdout.split(None, 2)
        return out if out[2].startswith("CrashLoopBackOff") else None
    row = until("CrashLoopBackOff in kubectl get pods", crash_row, timeout=15)
    assert row[1] == "0/1"
    assert re.match(r"^CrashLoopBackOff\s+\d+ \(\d+s ago\)\s+\d+s$", row[2]), row
    described = kubectl(emu, "describe", "pod", "crash").stdout
    assert re.search(r"State:\s+Waiting\n\s+Reason:\s+CrashLoopBackOff", described), described
    assert re.search(r"Last State:\s+Terminated\n\s+Reason:\s+Error\n\s+Exit Code:\s+3", described), described
    assert re.search(r"Restart Count:\s+\d+", described)

    backoffs = events(v1, "crash", "BackOff")
    assert backoffs and all(e.type == "Warning" for e in backoffs)
    assert backoffs[0].message == f"Back-off restarting failed container main in pod crash_{NS}({uid})"
    assert backoffs[0].involved_object.field_path == "spec.containers{main}"
    restarts = status_of(v1, "crash").restart_count
    started = events(v1, "crash", "Started")
    assert len(started) >= 5 and {e.message for e in started} == {"Started container main"}
    assert len(events(v1, "crash", "Created")) == len(started)
    assert len(started) in (restarts, restarts + 1)  # the latest instance may have started already

    # Logs: the latest instance, the one before with --previous; a follower ends with its instance.
    assert kubectl(emu, "logs", "crash").stdout == "crashing\n"
    assert kubectl(emu, "logs", "crash", "--previous").stdout == "crashing\n"
    assert kubectl(emu, "logs", "-f", "crash", timeout=20).stdout == "crashing\n"
    delete_and_wait(v1, "crash")


def test_never_and_on_failure_pods_that_end_are_not_restarted(v1: client.CoreV1Api) -> None:
    make_pod(v1, "never", "exit 3", policy="Never")
    make_pod(v1, "onfail-ok", "echo fine", policy="OnFailure")
    for name, phase in (("never", "Failed"), ("onfail-ok", "Succeeded")):
        until(f"{name} {phase}", lambda n=name, ph=phase: v1.read_namespaced_pod(n, NS).status.phase == ph)
    time.sleep(3 * BASE)  # long enough for a restart to have happened
    for name, code in (("never", 3), ("onfail-ok", 0)):
        st = status_of(v1, name)
        assert st.restart_count == 0 and st.last_state.terminated is None
        assert st.state.terminated.exit_code == code
        assert len(events(v1, name, "Started")) == 1 and not events(v1, name, "BackOff")
    assert v1.read_namespaced_pod("never", NS).status.phase == "Failed"
    delete_and_wait(v1, "never")
    delete_and_wait(v1, "onfail-ok")


def test_on_failure_restarts_a_failed_container_until_it_succeeds(v1: client.CoreV1Api) -> None:
    # Fails twice, then succeeds: the emptyDir outlives the container instances, as on a cluster.
    script = ("n=$(cat /scratch/n 2>/dev/null || echo 0); echo $((n + 1)) > /scratch/n; "
              "echo attempt $((n + 1)); [ $n -ge 2 ]")
    make_pod(v1, "flaky", script, policy="OnFailure", scratch=True)
    until("flaky Succeeded", lambda: v1.read_namespaced_pod("flaky", NS).status.phase == "Succeeded")
    st = status_of(v1, "flaky")
    assert st.restart_count == 2 and st.state.terminated.exit_code == 0
    assert st.last_state.terminated.exit_code == 1
    def log(**q: Any) -> str:
        return v1.read_namespaced_pod_log("flaky", NS, _preload_content=False, **q).data.decode()
    assert log() == "attempt 3\n" and log(previous=True) == "attempt 2\n"
    delete_and_wait(v1, "flaky")


def job(name: str, script: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {**spec, "template": {
        "spec": {"restartPolicy": "OnFailure", "terminationGracePeriodSeconds": 1,
                 "volumes": [{"name": "s", "emptyDir": {}}],
                 "containers": [{"name": "main", "image": "example/app:1", "command": ["sh", "-c", script],
                                 "volumeMounts": [{"name": "s", "mountPath": "/scratch"}]}]}}}}


def job_pods(v1: client.CoreV1Api, name: str) -> list[client.V1Pod]:
    return v1.list_namespaced_pod(NS, label_selector=f"batch.kubernetes.io/job-name={name}").items


@needs_kubectl
def test_on_failure_job_pod_restarts_in_place_then_succeeds(v1: client.CoreV1Api, batch: client.BatchV1Api,
                                                            emu: KubeEmulator) -> None:
    # Fails until a file on its emptyDir exists (the first attempt writes it): only an in-place restart,
    # which keeps the pod's emptyDir, can succeed.
    script = "if [ -f /scratch/seen ]; then echo repaired; exit 0; fi; touch /scratch/seen; echo first; exit 1"
    batch.create_namespaced_job(NS, job("fixup", script, backoffLimit=3))
    kubectl(emu, "wait", "--for=condition=complete", "job/fixup", "--timeout=30s")
    (pod,) = job_pods(v1, "fixup")  # restarted in place: no replacement pod
    st = pod.status.container_statuses[0]
    assert pod.status.phase == "Succeeded" and st.restart_count == 1
    assert st.last_state.terminated.exit_code == 1 and st.state.terminated.exit_code == 0
    status = batch.read_namespaced_job("fixup", NS).status
    assert (status.succeeded, status.failed or 0) == (1, 0)  # a restart is not a failed pod
    assert kubectl(emu, "logs", "job/fixup").stdout == "repaired\n"
    assert [e.message for e in v1.list_namespaced_event(NS, field_selector="involvedObject.name=fixup").items
            if e.reason == "SuccessfulCreate"] == [f"Created pod: {pod.metadata.name}"]
    batch.delete_namespaced_job("fixup", NS, propagation_policy="Background")
    until("fixup pods gone", lambda: not job_pods(v1, "fixup"))


def test_on_failure_restarts_count_against_backoff_limit(v1: client.CoreV1Api, batch: client.BatchV1Api) -> None:
    batch.create_namespaced_job(NS, job("doomed", "echo no; exit 1", backoffLimit=2))

    def failed() -> Any:
        conds = {c.type: c for c in batch.read_namespaced_job("doomed", NS).status.conditions or []
                 if c.status == "True"}
        return conds.get("Failed")
    cond = until("doomed Failed", failed)
    assert cond.reason == "BackoffLimitExceeded"
    creates = [e for e in v1.list_namespaced_event(NS, field_selector="involvedObject.name=doomed").items
               if e.reason == "SuccessfulCreate"]
    assert len(creates) == 1  # one pod, restarted in place twice, then the Job gave up
    batch.delete_namespaced_job("doomed", NS, propagation_policy="Background")
    until("doomed pods gone", lambda: not job_pods(v1, "doomed"))


def test_failed_liveness_probe_restarts_the_container(v1: client.CoreV1Api) -> None:
    port, closed = free_port(), free_port()
    make_pod(v1, "sick", f"exec python -m http.server {port} --bind 127.0.0.1",
             livenessProbe={"tcpSocket": {"port": closed}, "periodSeconds": 1, "failureThreshold": 1})
    # Each instance gets probe workers of its own: the restarted one is killed again.
    until("two liveness restarts", lambda: (status_of(v1, "sick").restart_count or 0) >= 2, timeout=40)
    p = v1.read_namespaced_pod("sick", NS)
    assert p.status.phase == "Running"
    last = p.status.container_statuses[0].last_state.terminated
    assert last.exit_code in (137, 143) and last.reason == "Error"
    killing = events(v1, "sick", "Killing")
    assert len(killing) >= 2
    assert {e.message for e in killing} == {"Container main failed liveness probe, will be restarted"}
    assert killing[0].involved_object.field_path == "spec.containers{main}"
    delete_and_wait(v1, "sick")


@needs_kubectl
def test_failed_init_container_is_restarted_before_the_containers_run(v1: client.CoreV1Api,
                                                                      emu: KubeEmulator) -> None:
    v1.create_namespaced_pod(NS, {"metadata": {"name": "initloop"}, "spec": {
        "terminationGracePeriodSeconds": 1, "volumes": [{"name": "s", "emptyDir": {}}],
        "initContainers": [{"name": "setup", "image": "example/app:1", "command": [
            "sh", "-c", "[ -f /scratch/tried ] && exit 0; touch /scratch/tried; exit 2"],
            "volumeMounts": [{"name": "s", "mountPath": "/scratch"}]}],
        "containers": [{"name": "main", "image": "example/app:1", "command": ["sleep", "60"]}]}})
    until("main running", lambda: (p := v1.read_namespaced_pod("initloop", NS)).status.phase == "Running" and
          p.status.container_statuses[0].state.running is not None)
    init = v1.read_namespaced_pod("initloop", NS).status.init_container_statuses[0]
    assert init.restart_count == 1 and init.state.terminated.exit_code == 0
    assert init.last_state.terminated.exit_code == 2
    row = kubectl(emu, "get", "pod", "initloop", "--no-headers").stdout.split()
    assert row[1:3] == ["1/1", "Running"]  # init restarts do not count once the pod is initialized
    delete_and_wait(v1, "initloop")
