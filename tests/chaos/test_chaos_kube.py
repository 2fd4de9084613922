"""Faults of Kubernetes (issue 15): the API server restarted while a sync pod runs under KubernetesPodOperator, and
during a rollout of the Triton fleet (tests/test_triton_fleet.py's stack and client loops).

The API server of the emulator (devstack/kube) is restarted the way kube-apiserver restarts on a cluster
(devstack/kube/restart.py): every connection cut (the operator's pod polls and its followed log), connections
refused for the outage, then the API back on the same ports with every object kept (the store stands for etcd)
and a fresh watch cache; the pod keeps running through it, as under a kubelet. A real Airflow task
(tests/test_k8s_kpo.py's one-task DAG, dag.test()) runs the project's sync pod, sync mode and deferrable.

Checked after each round: the run succeeded (the release is good: any other outcome is wrong) and its pod was
cleaned up after the restart, the PVC holds the version whole and byte-identical with a publish record, a watcher
never saw it partial, the objects made before the restart (namespace, ServiceAccount, PVC, Secret) are there with
the same uids, kubectl answers again, and a watch resuming from a resourceVersion before the restart is 410 Gone
(as a restarted apiserver's watch cache answers), so clients re-list instead of missing events.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from triton_rollout.config import AwsCredentials, KubernetesConfig, ModelDeployment
from triton_rollout.errors import RolloutError
from triton_rollout.kube.specs import step_pod
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.release.publish import publish_release
from triton_rollout.steps import SyncRequest

from devstack.kube import KubeEmulator
from devstack.kube.rbac import ADMIN_TOKEN
from tests import test_k8s_kpo, test_triton_fleet
from tests.chaos.ledger import LEDGER
from tests.chaos.test_chaos_triton import DEPLOY_DEADLINE_S, TRITON_MODEL, Outcome, deploy_as_the_dag
from tests.helpers import RepositoryWatcher, make_release_dir, run_kubectl, tree_digest
from tests.test_k8s_kpo import NS, labelled_pods, run_pod_dag
from tests.test_triton_fleet import NS as FLEET_NS
from tests.test_triton_fleet import TENSOR, Fleet, Loop, options

pytestmark = pytest.mark.slow

k8s = test_k8s_kpo.k8s  # the fixture: the namespace and the pods' ServiceAccount in the session's emulator

GROUP = "Kubernetes"
OUTAGE_S = 2.0
RUN_DEADLINE_S = 180.0  # a sync task that takes longer than this, restart included, is a hang


class RestartWhenRunning(threading.Thread):
    """Restarts the API server the moment a sync pod created after ``since`` is Running (polled as a client would:
    a failed poll is retried, the API may be the thing that is down)."""

    def __init__(self, emulator: KubeEmulator, v1: Any, since: float) -> None:
        super().__init__(daemon=True)
        self.emulator, self.v1, self.since = emulator, v1, since
        self.pod: str | None = None
        self.down_s: float | None = None
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            while not self.stop.is_set() and self.pod is None:
                for p in self.v1.list_namespaced_pod(NS, label_selector="app.kubernetes.io/component=sync").items:
                    if p.status.phase == "Running" and p.metadata.creation_timestamp.timestamp() >= self.since - 1:
                        self.pod = p.metadata.name
                time.sleep(0.05)
            if self.pod is not None:
                self.down_s = self.emulator.restart_api_server(OUTAGE_S)
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"


def uids(v1: Any, claim: str) -> dict[str, str]:
    return {"namespace": v1.read_namespace(NS).metadata.uid,
            "serviceaccount": v1.read_namespaced_service_account(KubernetesConfig().service_account, NS).metadata.uid,
            "pvc": v1.read_namespaced_persistent_volume_claim(claim, NS).metadata.uid,
            "secret": v1.read_namespaced_secret("s3-creds", NS).metadata.uid}


def watch_status(emulator: KubeEmulator, resource_version: str) -> int:
    """The HTTP status of a pods watch resuming from ``resource_version`` (200: it streams)."""
    req = urllib.request.Request(
        f"{emulator.server}/api/v1/namespaces/{NS}/pods?watch=1&timeoutSeconds=1&resourceVersion={resource_version}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.mark.parametrize("deferrable", [False, True], ids=["sync", "deferrable"])
def test_the_api_server_restarts_while_a_sync_pod_runs(airflow_dags: Path, kube_emulator: KubeEmulator, k8s: Any,
                                                        s3_server: Any, bucket: str, pvc: Path, tmp_path: Path,
                                                        capfd: pytest.CaptureFixture[str], deferrable: bool) -> None:
    row = LEDGER.row(GROUP, "API server restarted while a sync pod runs (KubernetesPodOperator)",
                     injected_how=f"the emulator's API restarted when the pod turns Running: every connection cut, "
                                  f"refused for {OUTAGE_S:.0f}s, back with every object and a fresh watch cache",
                     behaviour="the pod runs on; the operator's polls and log stream recover, the task succeeds and "
                               "deletes its pod; objects survive; old watches get 410 and clients re-list")
    src = make_release_dir(tmp_path / "src", seed=7, small=3, big_mib=48, model="llm")
    publish_release(src, f"s3://{bucket}/releases/llm/1")
    claim = f"repo-{uuid.uuid4().hex[:6]}"
    kube = KubernetesConfig()
    kube_emulator.create_pvc(NS, claim, pvc, owner=(kube.run_as_user, kube.fs_group))
    try:
        kube_emulator.create_secret(NS, "s3-creds", {"AWS_ACCESS_KEY_ID": s3_server.access_key,
                                                     "AWS_SECRET_ACCESS_KEY": s3_server.secret_key})
    except urllib.error.HTTPError as exc:
        if exc.code != 409:  # made by an earlier round (the same values)
            raise
    model = ModelDeployment(
        name="llm", release_prefix=f"s3://{bucket}/releases",
        kubernetes=KubernetesConfig(namespace=NS, pvc_claim=claim, aws=AwsCredentials(
            secret_name="s3-creds", endpoint_url=s3_server.endpoint, region="us-east-1")))
    before = uids(k8s, claim)
    rv_before = k8s.list_namespaced_pod(NS).metadata.resource_version
    version_dir = pvc / "repository" / "llm" / "1"
    expected = {f.relative_to(src / "llm").as_posix(): f.stat().st_size for f in (src / "llm").rglob("*")
                if f.is_file()}
    watcher = RepositoryWatcher(version_dir, expected)
    watcher.start()
    restart = RestartWhenRunning(kube_emulator, kube_emulator.core_v1(), time.time())
    restart.start()
    t0 = time.monotonic()
    try:
        run = run_pod_dag(airflow_dags, kube_emulator, step_pod(model, SyncRequest.for_model(model, model.release(1))),
                          on_finish_action="delete_pod", startup_timeout_seconds=60, deferrable=deferrable)
    finally:
        seconds = time.monotonic() - t0
        restart.stop.set()
        restart.join(timeout=OUTAGE_S + 30)
        watcher.stop.set()
        watcher.join(timeout=5)
    out = capfd.readouterr().out
    after = uids(k8s, claim)  # the admin client reconnects on its own once the API listens again
    synced = tree_digest(version_dir) if version_dir.exists() else {}
    lost = sum(before[k] != after.get(k) for k in before) + int(synced != tree_digest(src / "llm"))
    lost += int(PvcLayout.at(pvc, create=False).publish_record("llm", 1) is None)
    kubectl = run_kubectl(kube_emulator.kubeconfig, NS, "get", "pvc", claim, "-o", "json", check=False)
    old_watch = watch_status(kube_emulator, rv_before)
    fresh_watch = watch_status(kube_emulator, k8s.list_namespaced_pod(NS).metadata.resource_version)
    hang = int(seconds > RUN_DEADLINE_S)
    invariants = {
        "restarted while the pod ran": restart.pod is not None and (restart.down_s or 0) >= OUTAGE_S,
        "the run succeeded": run.state == "success",
        "its pod was deleted after the restart": labelled_pods(k8s, run.dag_id) == [],
        "the version whole, nothing lost": not lost,
        "never partial": not watcher.violations,
        "kubectl answers": kubectl.returncode == 0 and json.loads(kubectl.stdout or "{}").get(
            "metadata", {}).get("uid") == before["pvc"],
        "old watch 410, fresh watch 200": (old_watch, fresh_watch) == (410, 200),
        "no secret in the task log": s3_server.secret_key not in out,
        "no hang": not hang,
    }
    with LEDGER.lock:
        row.runs += 1
        row.injected += int(restart.pod is not None)
        row.survived += int(all(invariants.values()))
        row.data_lost += lost
        row.partial_visible += len(watcher.violations)
        row.hangs += hang
        row.seconds += seconds
    row.note(f"{'deferrable' if deferrable else 'sync'}: API down {restart.down_s}s, task {run.state} in "
             f"{seconds:.1f}s")
    print(f"FIGURES {row.fault}: {row.notes[-1]}")
    assert restart.error is None, restart.error
    assert all(invariants.values()), ({k: v for k, v in invariants.items() if not v}, restart.pod, kubectl.stderr,
                                      watcher.violations[:3], out[-3000:])


# -- the API server restarted during a fleet rollout ---------------------------------------------------------

fleet = test_triton_fleet.fleet  # the fixture: a stack of this module's own (two Triton replicas behind a Service)


def api_down(emulator: KubeEmulator) -> bool:
    try:
        with urllib.request.urlopen(f"{emulator.server}/version", timeout=0.5):
            return False
    except OSError:
        return True


def test_the_api_server_restarts_during_a_fleet_rollout(fleet: Fleet) -> None:
    """shadow, v1 -> v2 with client loops on the Service: the API restarts as the smoke step starts, so the smoke
    step's replica lookup meets a refused connection. The rollout's API calls retry through the outage
    (kube/fleet_api.py) and the deploy completes; the Service kept forwarding the whole time (no failed or untested
    answer), the serving-gate conditions survived, kubectl answers."""
    row = LEDGER.row(GROUP, "API server restarted during a fleet rollout",
                     injected_how=f"the emulator's API restarted as the smoke step starts: connections cut, refused "
                                  f"for {OUTAGE_S:.0f}s, back with every object",
                     behaviour="the rollout's API calls retry through the outage and the deploy completes; the "
                               "Service keeps serving; readiness gates and pods survive")
    tested: dict[int | str, float] = {}
    for v in (1, 2):
        fleet.publish_and_sync(TENSOR, v)
    assert deploy_as_the_dag(fleet, 1, options("shadow"), tested).promoted
    gates_before = {r.pod: (r.uid, r.gate) for r in fleet.api.replicas()}
    restart: list[float] = []

    def restart_api() -> None:
        thread = threading.Thread(target=lambda: restart.append(fleet.stack.kube.restart_api_server(OUTAGE_S)),
                                  daemon=True)
        thread.start()
        deadline = time.monotonic() + 5
        while not api_down(fleet.stack.kube) and time.monotonic() < deadline:
            time.sleep(0.02)

    t0 = time.monotonic()
    with Loop(fleet.service, "tensor") as a, Loop(fleet.service, "tensor", keep_alive=True) as b:
        time.sleep(0.5)
        try:
            outcome = deploy_as_the_dag(fleet, 2, options("shadow"), tested, before_smoke=restart_api)
        except RolloutError as exc:  # the rollback failed too: counted below, then the test fails
            outcome = Outcome(promoted=False, errors=[f"{type(exc).__name__}: {exc}"], seconds=time.monotonic() - t0)
        time.sleep(0.5)
    seconds = time.monotonic() - t0
    served = set(map(tuple, fleet.versions_served(TRITON_MODEL).values()))
    gates_after = {r.pod: (r.uid, r.gate) for r in fleet.api.replicas()}
    kubectl = run_kubectl(fleet.stack.kube.kubeconfig, FLEET_NS, "get", "pods", check=False)
    loops = (a, b)
    answers = sum(len(loop.answers) for loop in loops)
    wrong = sum(len(loop.untested(tested)) + len(loop.mislabelled()) for loop in loops) + sum(
        1 for loop in loops for ans in loop.answers if not isinstance(ans[2], int))
    failed = sum(len(loop.failed) for loop in loops)
    invariants = {
        "the API restarted": bool(restart) and restart[0] >= OUTAGE_S,
        "the deploy completed": outcome.promoted,
        "every replica serves the tested candidate": served == {(2,)} and 2 in tested,
        "state/ names it": fleet.layout.deployment(TENSOR).promoted == 2,
        "pods and their gates survived": {p: u for p, (u, _) in gates_after.items()} == {
            p: u for p, (u, _) in gates_before.items()} and all(g is True for _, g in gates_after.values()),
        "no untested, mislabelled or wrong answer": not wrong,
        "kubectl answers": kubectl.returncode == 0,
    }
    with LEDGER.lock:
        row.runs += 1
        row.injected += int(bool(restart))
        row.survived += int(all(invariants.values()))
        row.wrong_answers += wrong
        row.client_answers += answers
        row.hangs += int(outcome.seconds > DEPLOY_DEADLINE_S)
        row.seconds += seconds
    row.note(f"shadow v1->v2: API down {restart[0] if restart else None}s, "
             f"{'promoted' if outcome.promoted else 'rolled back'} in {outcome.seconds:.1f}s, {failed} failed / "
             f"{sum(loop.retried for loop in loops)} retried requests")
    print(f"FIGURES {row.fault}: {row.notes[-1]}; errors: {outcome.errors}")
    assert all(invariants.values()), ({k: v for k, v in invariants.items() if not v}, served, outcome.errors,
                                      kubectl.stderr)
