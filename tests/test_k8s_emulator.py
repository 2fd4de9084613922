"""The API-server emulator through the plain kubernetes client: what KubernetesPodOperator relies on."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from devstack.kube import KubeEmulator

NS = "emu"
PY = "python"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeEmulator]:
    state = tmp_path_factory.mktemp("kube")
    pvc = state / "pvc-host"
    pvc.mkdir()
    emulator = KubeEmulator(
        state / "emu",
        pvcs={f"{NS}/repo": str(pvc)},
        namespaces=[NS],
        secrets=[{"metadata": {"name": "s3", "namespace": NS}, "stringData": {"key": "s3cr3t"}}],
    ).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(scope="module")
def v1(emu: KubeEmulator) -> client.CoreV1Api:
    return emu.core_v1()


def pod(name: str, script: str, **spec: object) -> dict:
    return {
        "metadata": {"name": name, "labels": {"app": "t", "case": name}},
        "spec": {"restartPolicy": "Never", "containers": [
            {"name": "main", "image": "example/sync:1", "command": [PY, "-c", script]}], **spec},
    }


def read_log(v1: client.CoreV1Api, name: str, **kwargs: object) -> str:
    # Raw body: kubernetes-client 36 returns the repr of bytes from read_namespaced_pod_log
    # (kubernetes-client/python#2596); KubernetesPodOperator reads raw too.
    return v1.read_namespaced_pod_log(name, NS, _preload_content=False, **kwargs).data.decode()


def wait_phase(v1: client.CoreV1Api, name: str, phases: tuple[str, ...], timeout: float = 30) -> client.V1Pod:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        p = v1.read_namespaced_pod(name, NS)
        if p.status.phase in phases:
            return p
        time.sleep(0.1)
    raise AssertionError(f"pod {name} stuck in {p.status.phase}: {p.status}")


def test_discovery_and_version(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    version = client.VersionApi(v1.api_client).get_code()
    assert version.git_version.startswith("v1.")
    resources = {r.name for r in v1.get_api_resources().resources}
    assert {"pods", "pods/log", "secrets", "persistentvolumeclaims", "events", "namespaces"} <= resources
    assert NS in {n.metadata.name for n in v1.list_namespace().items}


def test_pod_runs_with_env_secret_and_pvc(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    script = (
        "import os; open('/data/out.txt','w').write(os.environ['TOKEN']);"
        "print('hello', os.environ['POD'], os.environ['GREETING']); import sys; print('err line', file=sys.stderr)"
    )
    body = pod("envpod", script, volumes=[{"name": "d", "persistentVolumeClaim": {"claimName": "repo"}}])
    c = body["spec"]["containers"][0]
    c["env"] = [
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "key"}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "GREETING", "value": "hi-$(POD)"},
    ]
    c["volumeMounts"] = [{"name": "d", "mountPath": "/data"}]
    v1.create_namespaced_pod(NS, body)
    done = wait_phase(v1, "envpod", ("Succeeded", "Failed"))
    assert done.status.phase == "Succeeded", done.status
    assert done.status.container_statuses[0].state.terminated.exit_code == 0
    assert (Path(emu.pvcs[f"{NS}/repo"]) / "out.txt").read_text() == "s3cr3t"
    log = read_log(v1, "envpod", container="main")
    assert "hello envpod hi-envpod" in log and "err line" in log
    stamped = read_log(v1, "envpod", timestamps=True)
    assert stamped.splitlines()[0][:4].isdigit() and stamped.splitlines()[0].split(" ", 1)[0].endswith("Z")


def test_failure_exit_code_and_selectors(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("fails", "import sys; print('bye'); sys.exit(7)"))
    done = wait_phase(v1, "fails", ("Succeeded", "Failed"))
    assert done.status.phase == "Failed"
    term = done.status.container_statuses[0].state.terminated
    assert (term.exit_code, term.reason) == (7, "Error")
    names = {p.metadata.name for p in v1.list_namespaced_pod(NS, label_selector="app=t,case in (fails,x)").items}
    assert names == {"fails"}
    assert not v1.list_namespaced_pod(NS, label_selector="case=fails,!app").items
    by_phase = v1.list_namespaced_pod(NS, field_selector="status.phase=Failed,metadata.name=fails").items
    assert [p.metadata.name for p in by_phase] == ["fails"]
    with pytest.raises(ApiException) as info:
        v1.list_namespaced_pod(NS, field_selector="spec.bogus=1")
    assert info.value.status == 400


def test_patch_labels_and_conflicts(v1: client.CoreV1Api) -> None:
    v1.create_namespaced_pod(NS, pod("patched", "pass"))
    before = v1.read_namespaced_pod("patched", NS).metadata.resource_version
    after = v1.patch_namespaced_pod("patched", NS, {"metadata": {"labels": {"already_checked": "True"}}})
    assert after.metadata.labels["already_checked"] == "True"
    assert int(after.metadata.resource_version) > int(before)
    assert v1.list_namespaced_pod(NS, label_selector="already_checked=True").items
    with pytest.raises(ApiException) as info:
        v1.create_namespaced_pod(NS, pod("patched", "pass"))
    assert info.value.status == 409
    with pytest.raises(ApiException) as info:
        v1.patch_namespaced_pod("patched", NS, {"spec": {"restartPolicy": "Always"}})
    assert info.value.status == 422


def test_watch_sees_the_lifecycle_from_a_resource_version(v1: client.CoreV1Api) -> None:
    rv = v1.list_namespaced_pod(NS).metadata.resource_version
    v1.create_namespaced_pod(NS, pod("watched", "print('x')"))
    phases = []
    w = watch.Watch()
    for event in w.stream(v1.list_namespaced_pod, NS, field_selector="metadata.name=watched",
                          resource_version=rv, timeout_seconds=20):
        phases.append((event["type"], event["object"].status.phase))
        if event["object"].status.phase == "Succeeded":
            w.stop()
    assert phases[0] == ("ADDED", "Pending")
    assert ("MODIFIED", "Succeeded") in phases
    v1.delete_namespaced_pod("watched", NS)
    with pytest.raises(ApiException) as info:
        v1.read_namespaced_pod("watched", NS)
    assert info.value.status == 404


def test_follow_log_streams_before_exit_and_delete_kills(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    script = "import time\nfor i in range(100):\n    print('tick', i, flush=True); time.sleep(0.1)"
    v1.create_namespaced_pod(NS, pod("ticker", script))
    wait_phase(v1, "ticker", ("Running",))
    resp = v1.read_namespaced_pod_log("ticker", NS, follow=True, _preload_content=False)
    first = b""
    for chunk in resp.stream(amt=None):
        first += chunk
        if b"tick 2" in first:
            break
    resp.release_conn()
    assert b"tick 0" in first  # arrived while the container was still running
    start = time.monotonic()
    v1.delete_namespaced_pod("ticker", NS, grace_period_seconds=1)
    while True:
        try:
            v1.read_namespaced_pod("ticker", NS)
        except ApiException as exc:
            assert exc.status == 404
            break
        assert time.monotonic() - start < 8, "deleted pod still there"
        time.sleep(0.1)
    assert time.monotonic() - start < 5  # killed, not run to completion (10 s)


def test_unschedulable_gpu_pod_stays_pending_with_reason(v1: client.CoreV1Api) -> None:
    body = pod("gpu", "print('never')")
    body["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "2"}}
    body["spec"]["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    v1.create_namespaced_pod(NS, body)
    deadline = time.monotonic() + 10
    cond = None
    while time.monotonic() < deadline and cond is None:
        p = v1.read_namespaced_pod("gpu", NS)
        cond = next((c for c in p.status.conditions or [] if c.type == "PodScheduled"), None)
        time.sleep(0.1)
    assert cond is not None and (cond.status, cond.reason) == ("False", "Unschedulable")
    assert "node affinity/selector" in cond.message
    time.sleep(0.5)
    assert v1.read_namespaced_pod("gpu", NS).status.phase == "Pending"
    events = v1.list_namespaced_event(NS, field_selector="involvedObject.name=gpu").items
    assert any(e.reason == "FailedScheduling" for e in events)
    v1.delete_namespaced_pod("gpu", NS)


def test_init_containers_run_first_and_missing_secret_keeps_pending(v1: client.CoreV1Api, emu: KubeEmulator) -> None:
    body = pod("init", "print(open('/scratch/x').read())", volumes=[{"name": "w", "emptyDir": {}}])
    body["spec"]["containers"][0]["volumeMounts"] = [{"name": "w", "mountPath": "/scratch"}]
    body["spec"]["initContainers"] = [{"name": "prep", "image": "x/y:1", "command": [PY, "-c",
                                       "open('/scratch/x','w').write('from-init')"],
                                       "volumeMounts": [{"name": "w", "mountPath": "/scratch"}]}]
    v1.create_namespaced_pod(NS, body)
    done = wait_phase(v1, "init", ("Succeeded", "Failed"))
    if shutil.which("bwrap") is None:
        assert done.status.phase == "Failed"  # mount needs bubblewrap; the reason says so
        return
    assert done.status.phase == "Succeeded"
    assert done.status.init_container_statuses[0].state.terminated.exit_code == 0
    assert "from-init" in read_log(v1, "init", container="main")

    nosecret = pod("nosecret", "print(1)")
    nosecret["spec"]["containers"][0]["env"] = [
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "absent", "key": "k"}}}]
    v1.create_namespaced_pod(NS, nosecret)
    time.sleep(1.5)
    p = v1.read_namespaced_pod("nosecret", NS)
    assert p.status.phase == "Pending"
    assert p.status.container_statuses[0].state.waiting.reason == "CreateContainerConfigError"
    v1.delete_namespaced_pod("nosecret", NS)


def test_concurrent_clients(v1: client.CoreV1Api) -> None:
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            for _ in range(20):
                v1.list_namespaced_pod(NS, label_selector="app=t")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_stopping_the_emulator_kills_running_pods(tmp_path: Path) -> None:
    emulator = KubeEmulator(tmp_path / "short-lived").start()
    try:
        v1 = emulator.core_v1()
        body = pod("sleeper", "import time; print('up', flush=True); time.sleep(120)",
                   volumes=[{"name": "w", "emptyDir": {}}])
        body["spec"]["containers"][0]["volumeMounts"] = [{"name": "w", "mountPath": "/scratch"}]
        v1.create_namespaced_pod("default", body)
        deadline = time.monotonic() + 20
        while v1.read_namespaced_pod("sleeper", "default").status.phase != "Running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        v1.api_client.close()
        assert _processes_mentioning("time.sleep(120)")  # the pod's process, before the stop
    finally:
        emulator.stop()
    time.sleep(0.2)
    assert _processes_mentioning(str(tmp_path / "short-lived")) == []
    assert _processes_mentioning("time.sleep(120)") == []


def test_stop_recorded_uses_the_pid_file_and_ignores_stale_ones(tmp_path: Path) -> None:
    emulator = KubeEmulator(tmp_path / "recorded").start()
    pid = emulator.pid
    assert KubeEmulator.stop_recorded(tmp_path / "recorded") is True
    assert not Path(f"/proc/{pid}").exists() or b"devstack.kube" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    (tmp_path / "recorded" / "apiserver.pid").write_text(f"{os.getpid()}\n")  # stale: names this test process
    assert KubeEmulator.stop_recorded(tmp_path / "recorded") is True  # and we are still alive to assert it
    assert KubeEmulator.stop_recorded(tmp_path / "nothing-here") is False
