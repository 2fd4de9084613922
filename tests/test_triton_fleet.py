"""A rollout across a Triton fleet (triton/fleet.py), on the local stack's real fleet: the project's Triton
Deployment of two real tritonservers in the Kubernetes emulator, each on its own pod IP, their serving-gate
sidecars, the Service's loopback proxy. Client loops send unversioned requests through the Service address
(what clients use) the whole time; each answer is classified by what it carries (demo-tensor's output
identifies the weights, demo-llm's text the corpus), so the counts are measured, not inferred:

- failed: requests that got no answer (a loop retries up to twice on a refused or reset connection, as a client
  of an idempotent inference API does; retries are counted: a SIGKILLed replica resets the connections it holds,
  and the Service's round-robin can send a retry to it again before its endpoint is marked not ready);
- untested: answers produced by a version before it passed its smoke test on the replica that answered
  (a wrong-answer candidate's answer, or the candidate's before its smoke step finished);
- mislabelled: answers whose ``model_version`` is not the version that produced them.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from triton_rollout.errors import FleetError, SmokeTestFailed, TritonError
from triton_rollout.kube.fleet_api import SERVING_GATE, FleetApi
from triton_rollout.pvc.layout import PvcLayout
from triton_rollout.release.sync import sync_release
from triton_rollout.triton.control import TritonControl
from triton_rollout.triton.fleet import FleetOptions, fleet_load, fleet_promote, fleet_rollback, fleet_smoke
from triton_rollout.triton.promote import plan_rollback, prepare_release

from devstack import demo_models
from tests.helpers import ClientLoop, environment, golden, run_kubectl, until

pytestmark = pytest.mark.slow

NS = "triton"
TENSOR = demo_models.TENSOR_MODEL
LLM = demo_models.LLM_MODEL
X = np.array([[1, 2, 3, 4]], dtype=np.float32)
RETRIES = 2  # per request, on a refused or reset connection only


@dataclass
class Fleet:
    stack: Any
    api: FleetApi
    layout: PvcLayout
    work: Path

    @property
    def service(self) -> tuple[str, int]:
        host, port = self.stack.triton_url.removeprefix("http://").rsplit(":", 1)
        return host, int(port)

    def publish_and_sync(self, model: str, version: int, variant: str = "good") -> None:
        from devstack.stack import BUCKET

        with environment(self.stack.s3.env()):
            uri = demo_models.publish_version(BUCKET, self.work / "src", model, version, variant=variant)
            sync_release(uri, self.layout.root)

    def release(self, model: str, version: int) -> Any:
        # Engine paths as the Triton pods see repository/ (their mount, not the host's PVC folder).
        return prepare_release(self.layout, model, version, triton_repository=self.stack.triton_repository)

    def kubectl(self, *args: str) -> str:
        return run_kubectl(self.stack.kube.kubeconfig, NS, *args).stdout

    def versions_served(self, triton_model: str) -> dict[str, list[int]]:
        out = {}
        for r in self.api.replicas():
            with TritonControl(r.url) as control:
                out[r.pod] = control.ready_versions(triton_model)
        return out


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    from devstack.stack import LocalStack
    from devstack.triton import install

    install()
    root = tmp_path_factory.mktemp("fleet")
    stack = LocalStack(root / "stack", triton_replicas=2, event_models=())
    try:
        stack.start()
        from kubernetes import config

        api = FleetApi(NS, "triton", config.new_client_from_config(config_file=str(stack.kube.kubeconfig)))
        yield Fleet(stack=stack, api=api, layout=PvcLayout.at(stack.pvc, create=False), work=root)
        api.close()
    finally:
        stack.stop()


# -- clients ------------------------------------------------------------------------------------------


def tensor_answer_version(data: list[float]) -> int | str:
    """Which release produced an OUTPUT0 for X: a good version's number, or 'wrong:<v>' for a wrong variant."""
    for v in range(1, 10):
        w, b = demo_models.tensor_weights(v)
        if np.array_equal(np.asarray(data, dtype=np.float32).reshape(1, 3), X @ w + b):
            return v
        if np.array_equal(np.asarray(data, dtype=np.float32).reshape(1, 3), X @ -w + b):
            return f"wrong:{v}"
    return "unknown"


def llm_answer_version(text: str) -> int | str:
    return next((v for v in range(1, 10) if golden(v) == text), "unknown")


@dataclass
class Loop:
    """Unversioned requests back to back through the Service, one connection per request (as a per-request
    balancer in front of Triton would send them), or one keep-alive connection (``keep_alive``)."""

    address: tuple[str, int]  # the Service's (or, to pin a connection, a pod's) host and port
    kind: str  # "tensor" | "llm"
    keep_alive: bool = False
    retried: int = 0
    _conn: http.client.HTTPConnection | None = None
    _loop: ClientLoop | None = None  # the thread, and what it counted (helpers.ClientLoop)

    @property
    def answers(self) -> list[tuple[float, int | str, int | str]]:  # (t, label, producer)
        return self._loop.answers if self._loop is not None else []

    @property
    def failed(self) -> list[str]:
        return self._loop.failed if self._loop is not None else []

    def _request(self) -> tuple[str, str, bytes]:
        if self.kind == "tensor":
            body = {"inputs": [{"name": "INPUT0", "shape": [1, 4], "datatype": "FP32", "data": X.ravel().tolist()}]}
            return "POST", "/v2/models/demo_tensor/infer", json.dumps(body).encode()
        return "POST", "/v2/models/ensemble/generate", json.dumps({"text_input": "the ", "max_tokens": 12}).encode()

    def _classify(self, answer: dict[str, Any]) -> tuple[int | str, int | str]:
        label = int(answer["model_version"])
        if self.kind == "tensor":
            return label, tensor_answer_version(answer["outputs"][0]["data"])
        return label, llm_answer_version(answer["text_output"])

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def send(self) -> tuple[float, int | str, int | str]:
        """One request (retried on a refused or reset connection): when it was answered, its label, its producer."""
        method, path, body = self._request()
        headers = {"Content-Type": "application/json", **({} if self.keep_alive else {"Connection": "close"})}
        for attempt in range(RETRIES + 1):
            try:
                if self._conn is None:
                    self._conn = http.client.HTTPConnection(*self.address, timeout=30)
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                data = resp.read()
                if not self.keep_alive:
                    self._close()
                break
            except (ConnectionError, http.client.HTTPException, OSError):
                self._close()
                if attempt == RETRIES:
                    raise
                self.retried += 1
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:200]!r}")
        return (time.monotonic(), *self._classify(json.loads(data)))

    def __enter__(self) -> Loop:
        self._loop = ClientLoop(self.send).__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None
        self._loop.__exit__(*exc)
        self._close()

    def mislabelled(self) -> list[tuple[float, int | str, int | str]]:
        return [a for a in self.answers if a[1] != a[2]]

    def untested(self, tested_at: dict[int | str, float]) -> list[tuple[float, int | str, int | str]]:
        """Answers from a producer before it was tested (``tested_at``: when each version's first smoke test
        passed; versions not in it never passed one)."""
        return [a for a in self.answers if a[0] < tested_at.get(a[2], float("inf"))]

    def figures(self) -> dict[str, int]:
        return {"answered": len(self.answers), "failed": len(self.failed), "retried": self.retried}


def options(candidate: str, **kw: Any) -> FleetOptions:
    return FleetOptions(**{"candidate": candidate, "deadline_s": 60, "budget_s": 10, "quiet_s": 1.0,
                           "drain_deadline_s": 20, **kw})


def deploy(fleet: Fleet, model: str, version: int, opts: FleetOptions, tested_at: dict[int | str, float],
           between: Callable[[], None] | None = None) -> Any:
    """The deploy DAG's order: load (the canary) -> smoke -> promote (the rest), or a rollback."""
    release = fleet.release(model, version)
    fleet_load(fleet.api, fleet.layout, release, opts)
    try:
        fleet_smoke(fleet.api, fleet.layout, release, opts)
    except SmokeTestFailed as exc:
        plan = plan_rollback(fleet.layout, model, failed_version=version,
                             triton_repository=fleet.stack.triton_repository)
        fleet_rollback(fleet.api, fleet.layout, plan, opts, reason=exc.message, run_id="test")
        raise
    tested_at.setdefault(version, time.monotonic())
    if between is not None:
        between()
    return fleet_promote(fleet.api, fleet.layout, release, opts, run_id="test")


def assert_fleet_serves(fleet: Fleet, triton_models: list[str], version: int) -> None:
    replicas = fleet.api.replicas()
    assert len(replicas) >= 2 and all(r.in_service and r.gate is True for r in replicas), replicas
    for name in triton_models:
        assert set(map(tuple, fleet.versions_served(name).values())) == {(version,)}, (name, version)
    assert fleet.layout.deployment(
        TENSOR if triton_models == [demo_models.TENSOR_TRITON_MODEL] else LLM).promoted == version


# -- the tests ----------------------------------------------------------------------------------------


def test_pods_join_the_service_through_their_serving_gate_sidecar(fleet: Fleet) -> None:
    pods = json.loads(fleet.kubectl("get", "pods", "-l", "app.kubernetes.io/name=triton", "-o", "json"))["items"]
    assert len(pods) == 2
    for pod in pods:
        assert pod["spec"]["readinessGates"] == [{"conditionType": SERVING_GATE}]
        gate = next(c for c in pod["status"]["conditions"] if c["type"] == SERVING_GATE)
        assert gate["status"] == "True" and gate["reason"] == "RolloutServing", gate
        log = fleet.kubectl("logs", pod["metadata"]["name"], "-c", "serving-gate")
        assert f"{SERVING_GATE} set True" in log, log
    assert [r.in_service for r in fleet.api.replicas()] == [True, True]


def test_in_place_rollout_drains_each_replica_and_no_client_sees_an_untested_version(fleet: Fleet) -> None:
    tested: dict[int | str, float] = {}
    for v in (1, 2):
        fleet.publish_and_sync(TENSOR, v)
    opts = options("in_place")
    deploy(fleet, TENSOR, 1, opts, tested)  # the first version, before any client
    assert_fleet_serves(fleet, [demo_models.TENSOR_TRITON_MODEL], 1)
    t0 = time.monotonic()
    with Loop(fleet.service, "tensor") as a, Loop(fleet.service, "tensor") as b:
        time.sleep(1.0)
        result = deploy(fleet, TENSOR, 2, opts, tested)
        time.sleep(1.0)
    seconds = time.monotonic() - t0
    assert [r.action for r in result.replicas] == ["promoted", "promoted"]
    assert all(r.drained for r in result.replicas)  # in place, with another replica to serve: each one drained
    assert result.replicas[1].smoke is not None  # the second replica was smoke-tested before it rejoined
    assert_fleet_serves(fleet, [demo_models.TENSOR_TRITON_MODEL], 2)
    for loop in (a, b):
        assert not loop.failed, loop.failed[:3]
        assert not loop.mislabelled()
        assert not loop.untested(tested), loop.untested(tested)[:3]
        assert Counter(p for _, _, p in loop.answers).keys() == {1, 2}
    print(f"FIGURES in_place v1->v2 2 replicas: {a.figures()} {b.figures()} in {seconds:.1f}s")


def test_a_wrong_answer_and_an_init_error_candidate_never_reach_a_client(fleet: Fleet) -> None:
    tested: dict[int | str, float] = {1: 0.0, 2: 0.0}  # v1 and v2 passed their smoke tests in the test above
    fleet.publish_and_sync(TENSOR, 3, "wrong")
    fleet.publish_and_sync(TENSOR, 4, "init_error")
    opts = options("in_place")
    with Loop(fleet.service, "tensor") as loop:
        with pytest.raises(SmokeTestFailed, match="version 3"):
            deploy(fleet, TENSOR, 3, opts, tested)
        assert_fleet_serves(fleet, [demo_models.TENSOR_TRITON_MODEL], 2)
        with pytest.raises(TritonError, match="v4 failed to load"):
            deploy(fleet, TENSOR, 4, opts, tested)
        time.sleep(0.5)
    assert_fleet_serves(fleet, [demo_models.TENSOR_TRITON_MODEL], 2)
    assert not loop.failed and not loop.mislabelled()
    assert not loop.untested(tested), loop.untested(tested)[:3]
    assert {p for _, _, p in loop.answers} == {2}
    history = [(e.event, e.version) for e in fleet.layout.deployment(TENSOR).history[-1:]]
    assert history == [("rollback", 2)]
    print(f"FIGURES in_place wrong v3 + init-error v4 rolled back: {loop.figures()}")


def test_a_keep_alive_client_on_the_drained_replica_fails_the_in_place_rollout_closed(fleet: Fleet) -> None:
    """kube-proxy balances connections: a keep-alive client stays on a replica that left the Service. Loading
    in place under it would serve it the untested candidate, so the rollout waits for quiet, then gives up."""
    fleet.publish_and_sync(TENSOR, 5)
    release = fleet.release(TENSOR, 5)
    canary = fleet.api.replicas()[0]
    tested: dict[int | str, float] = {2: 0.0}
    # A keep-alive loop pinned to the canary's pod IP (what a connection the Service once routed there does).
    pinned = Loop((canary.address, canary.port), "tensor", keep_alive=True)
    with pinned, pytest.raises(FleetError, match=rf"{canary.pod} .* still answered .* keep-alive"):
        fleet_load(fleet.api, fleet.layout, release, options("in_place", drain_deadline_s=4))
    assert_fleet_serves(fleet, [demo_models.TENSOR_TRITON_MODEL], 2)  # back in the Service, v2 only
    assert not pinned.failed and not pinned.untested(tested) and pinned.answers


def test_the_last_replica_in_service_is_never_drained(fleet: Fleet) -> None:
    """In place with one of two replicas out of the Service: draining the other would be an outage. Refused,
    nothing changed."""
    release = fleet.release(TENSOR, 5)
    out, last = fleet.api.replicas()
    fleet.api.set_gate(out.pod, False, "test: out of service")
    try:
        fleet.api.wait_in_service(out.pod, False, 10)
        with pytest.raises(FleetError, match=rf"not draining {last.pod}: no other replica"):
            fleet_load(fleet.api, fleet.layout, release, options("in_place"))
        assert next(r for r in fleet.api.replicas() if r.pod == last.pod).in_service
        with TritonControl(last.url) as control:
            assert control.ready_versions(demo_models.TENSOR_TRITON_MODEL) == [2]
    finally:
        fleet.api.set_gate(out.pod, True, "test: back")
        fleet.api.wait_in_service(out.pod, True, 10)


def test_shadow_rollout_with_keep_alive_clients_and_a_replica_killed_mid_rollout(fleet: Fleet) -> None:
    """candidate: shadow needs no drain, so keep-alive clients are fine; the canary's tritonserver is SIGKILLed
    between the smoke test and promote: it restarts on the promoted version from disk, promote notices it no
    longer carries the candidate and cycles it like the others."""
    tested: dict[int | str, float] = {2: 0.0}
    fleet.publish_and_sync(TENSOR, 6)
    opts = options("shadow")
    killed: list[str] = []

    def kill_canary() -> None:
        pod = next(p for p in json.loads(fleet.kubectl("get", "pods", "-l", "app.kubernetes.io/name=triton", "-o",
                                                        "json"))["items"])
        ip = pod["status"]["podIP"]
        pid = _tritonserver_pid(ip)
        os.kill(pid, signal.SIGKILL)
        killed.append(pod["metadata"]["name"])
        until("the killed replica back in the Service", lambda: next(
            (r for r in fleet.api.replicas() if r.pod == killed[0] and r.in_service and r.restarts >= 1), None),
            timeout=60)

    with Loop(fleet.service, "tensor", keep_alive=True) as a, Loop(fleet.service, "tensor") as b:
        time.sleep(0.5)
        result = deploy(fleet, TENSOR, 6, opts, tested, between=kill_canary)
        time.sleep(0.5)
    assert_fleet_serves(fleet, [demo_models.TENSOR_TRITON_MODEL], 6)
    assert killed and all(r.smoke is not None for r in result.replicas), result.to_dict()
    for loop in (a, b):
        assert not loop.failed, loop.failed[:3]
        assert not loop.mislabelled() and not loop.untested(tested)
    print(f"FIGURES shadow v2->v6, canary SIGKILLed before promote: {a.figures()} {b.figures()}")


def test_a_replica_added_after_promote_comes_up_on_the_promoted_version(fleet: Fleet) -> None:
    tested: dict[int | str, float] = {6: 0.0}
    with Loop(fleet.service, "tensor") as loop:
        fleet.kubectl("scale", "deploy/triton", "--replicas=3")
        until("three replicas in the Service", lambda: len([r for r in fleet.api.replicas() if r.in_service]) == 3,
              timeout=90)
        time.sleep(1.0)
    assert_fleet_serves(fleet, [demo_models.TENSOR_TRITON_MODEL], 6)
    assert not loop.failed and not loop.mislabelled() and not loop.untested(tested)
    fleet.kubectl("scale", "deploy/triton", "--replicas=2")
    until("back to two replicas", lambda: len(fleet.api.replicas()) == 2, timeout=60)


def test_llm_ensemble_generate_across_the_fleet(fleet: Fleet) -> None:
    tested: dict[int | str, float] = {}
    for v in (1, 2):
        fleet.publish_and_sync(LLM, v)
    opts = options("shadow")
    deploy(fleet, LLM, 1, opts, tested)
    t0 = time.monotonic()
    with Loop(fleet.service, "llm") as a, Loop(fleet.service, "llm", keep_alive=True) as b:
        time.sleep(1.0)
        deploy(fleet, LLM, 2, opts, tested)
        time.sleep(1.0)
    seconds = time.monotonic() - t0
    assert_fleet_serves(fleet, list(demo_models.LLM_TRITON_MODELS), 2)
    for loop in (a, b):
        assert not loop.failed, loop.failed[:3]
        assert not loop.mislabelled(), loop.mislabelled()[:3]
        assert not loop.untested(tested)
        assert {p for _, _, p in loop.answers} == {1, 2}
    print(f"FIGURES llm shadow v1->v2 2 replicas: {a.figures()} {b.figures()} in {seconds:.1f}s")


def _tritonserver_pid(ip: str) -> int:
    lines = subprocess.run(["ss", "-ltnpH", f"src {ip}:8000"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"pid=(\d+)", lines)
    assert match, f"no tritonserver listening on {ip}:8000"
    return int(match[1])


def test_the_step_pods_roll_the_fleet_in_cluster(fleet: Fleet) -> None:
    """The load, smoke and promote pods the deploy DAG runs (kube/specs.py step_pod, the models.yaml config with
    kubernetes.triton_service), in the emulator: each finds the replicas with its own service account token
    (the rendered RBAC, Role triton-rollout-fleet) and reaches them at their pod IPs."""
    from triton_rollout.config import read_config_file
    from triton_rollout.kube import specs
    from triton_rollout.steps import LoadRequest, PromoteRequest, SmokeRequest

    from devstack.stack import MODELS_CONFIG, PVC_OWNER

    if fleet.layout.deployment(TENSOR).promoted != 6:  # run on its own: v6 first, as the tests above leave it
        fleet.publish_and_sync(TENSOR, 6)
        deploy(fleet, TENSOR, 6, options("shadow"), {})
    fleet.publish_and_sync(TENSOR, 7)
    # The steps above ran here as root, standing in for the pods; the pods run as the volume's owner.
    for path in [fleet.layout.root, *fleet.layout.root.rglob("*")]:
        os.chown(path, *PVC_OWNER, follow_symlinks=False)
    (model,) = [m for m in read_config_file(MODELS_CONFIG, environ={**os.environ, **fleet.stack.env()}).models
                if m.name == TENSOR]
    assert model.kubernetes.triton_service == "triton"
    results: dict[str, Any] = {}
    tested: dict[int | str, float] = {6: 0.0}

    def phase(name: str) -> str | None:
        value = json.loads(fleet.kubectl("get", "pod", name, "-o", "json"))["status"].get("phase")
        return value if value in ("Succeeded", "Failed") else None

    with Loop(fleet.service, "tensor") as loop:
        # One run id for the three, as the DAG passes its run's: the deploy lease holds the model from load to
        # promote for that run (a promote under another run's id stops, exit code 20).
        for request in (LoadRequest.for_model(model, 7, "pods-test"), SmokeRequest.for_model(model, 7, "pods-test"),
                        PromoteRequest.for_model(model, 7, "pods-test")):
            pod = specs.to_dict(specs.step_pod(model, request, name=f"fleet-{request.command}"))
            assert pod["spec"]["automountServiceAccountToken"] is True
            argv = request.to_argv()
            assert argv[argv.index("--triton-service") + 1] == "triton/triton"
            run_kubectl(fleet.stack.kube.kubeconfig, NS, "apply", "-f", "-", stdin=json.dumps(pod))
            name = pod["metadata"]["name"]
            done = until(f"pod {name} finished", lambda name=name: phase(name), timeout=120)
            log = fleet.kubectl("logs", name)
            assert done == "Succeeded", log
            results[request.command] = json.loads(log.strip().splitlines()[-1])
            if request.command == "smoke":
                tested[7] = time.monotonic()
        time.sleep(0.5)
    assert results["load"]["canary"]["pod"] in {r.pod for r in fleet.api.replicas()}
    assert len(results["smoke"]["replicas"]) == 1
    assert [r["action"] for r in results["promote"]["replicas"]] == ["promoted", "promoted"]
    assert_fleet_serves(fleet, [demo_models.TENSOR_TRITON_MODEL], 7)
    assert not loop.failed and not loop.mislabelled() and not loop.untested(tested)
    assert {p for _, _, p in loop.answers} == {6, 7}


def test_the_triton_models_view_reads_each_replica_with_the_workers_identity(fleet: Fleet) -> None:
    """The UI view's replica read (airflow/ui/fleet.py), as the api-server does it: with Airflow's Kubernetes
    identity (the rendered Role airflow-fleet-reader is all it has beyond the pod launcher's)."""
    from kubernetes import config
    from triton_rollout.airflow.ui.fleet import Note, gather_fleet, read_replicas
    from triton_rollout.config import read_config_file

    from devstack.stack import MODELS_CONFIG
    from tests.test_ui_fleet import Elements, no_history, render

    (model,) = [m for m in read_config_file(MODELS_CONFIG, environ={**os.environ, **fleet.stack.env()}).models
                if m.name == TENSOR]
    as_airflow = config.new_client_from_config(config_file=str(fleet.stack.airflow_kube))
    drained = fleet.api.replicas()[0]
    fleet.api.set_gate(drained.pod, False, "test: drained")
    try:
        fleet.api.wait_in_service(drained.pod, False, 10)
        found = read_replicas(model, api_client_for=lambda _: as_airflow)
        assert found.problem is None, found.problem
        promoted = fleet.layout.deployment(TENSOR).promoted
        # The whole page, as the api-server gathers it (S3 from the standard AWS environment, no run history).
        with environment(fleet.stack.s3.env()):
            page_fleet = gather_fleet([dataclasses.replace(model, aws_conn_id=None)], history=no_history,
                                      triton_url_for=lambda _: fleet.stack.triton_url,
                                      replicas_for=lambda m: found)
        (view,) = page_fleet.models
        assert view.replicas is not None and view.replicas.problem is None
        rows = {r.pod: r for r in view.replicas.replicas}
        assert set(rows) == {r.pod for r in fleet.api.replicas()} and len(rows) == 2
        assert {r.serving.version for r in rows.values()} == {promoted}
        assert rows[drained.pod].in_service is False and rows[drained.pod].gate is False
        assert all(r.in_service for p, r in rows.items() if p != drained.pod)
        assert Note("info", f"replica {drained.pod} is out of the Service (drained by a rollout)") in view.notes
        page = Elements(render(page_fleet))
        assert sorted(a["data-pod"] for a in page.attrs("replica")) == sorted(rows)
        shown = f"v{promoted}" if promoted is not None else "none"  # run alone: nothing deployed yet
        assert page.texts("replica-version") == [shown, shown]
        assert {a["data-in-service"] for a in page.attrs("replica-in-service")} == {"true", "false"}
    finally:
        fleet.api.set_gate(drained.pod, True, "test: back")
        fleet.api.wait_in_service(drained.pod, True, 10)
    # Without the Role the view says what is missing, and renders the rest.
    denied = read_replicas(model, api_client_for=lambda _: config.new_client_from_config(
        config_file=str(fleet.stack.kube.service_account_kubeconfig(NS, "default"))))
    assert denied.problem is not None and "airflow-fleet-reader" in denied.problem.hint



def test_reconcile_converges_every_replica_and_readmits_a_drained_one(fleet: Fleet, tmp_path: Path) -> None:
    """The reconcile step with --triton-service: a replica that lost the model (unloaded by hand) gets the promoted
    version back and is named; one left drained (a rollout that died between its steps) and serving the
    promoted version is put back into the Service."""
    from triton_rollout.cli.main import main

    promoted = fleet.layout.deployment(TENSOR).promoted
    assert promoted is not None
    lost, drained = fleet.api.replicas()
    with TritonControl(lost.url) as control:
        control.unload(demo_models.TENSOR_TRITON_MODEL, wait_s=10)
    fleet.api.set_gate(drained.pod, False, "test: a rollout died here")
    fleet.api.wait_in_service(drained.pod, False, 10)
    result = tmp_path / "reconcile.json"
    with environment({"KUBECONFIG": str(fleet.stack.kube.kubeconfig), **fleet.stack.s3.env()}):
        code = main(["reconcile", "--pvc", str(fleet.layout.root), "--triton-url", fleet.stack.triton_url,
                     "--triton-repository", fleet.stack.triton_repository, "--model", TENSOR,
                     "--triton-service", f"{NS}/triton", "--release-prefix", "s3://models/releases",
                     "--result-file", str(result)])
    report = json.loads(result.read_text())
    assert code == 0, report
    assert report["replicas_differed"] == [lost.pod] and report["reloaded"] is True
    assert report["triton_not_ready"] == [f"{lost.pod}: {demo_models.TENSOR_TRITON_MODEL}"]
    assert report["readmitted"] == [drained.pod]
    assert_fleet_serves(fleet, [demo_models.TENSOR_TRITON_MODEL], promoted)
    # status --triton-service: each replica with what it serves, in the Service again.
    status = tmp_path / "status.json"
    with environment({"KUBECONFIG": str(fleet.stack.kube.kubeconfig)}):
        assert main(["status", "--pvc", str(fleet.layout.root), "--triton-url", fleet.stack.triton_url,
                     "--triton-service", f"{NS}/triton", "--json", "--result-file", str(status)]) == 0
    replicas = json.loads(status.read_text())["replicas"]
    assert sorted(r["pod"] for r in replicas) == sorted([lost.pod, drained.pod])
    for r in replicas:
        assert r["in_service"] is True and r["gate"] is True
        assert {(m["name"], m["version"]) for m in r["triton"]["loaded"] if m["state"] == "READY"} >= {
            (demo_models.TENSOR_TRITON_MODEL, str(promoted))}
